// Package mochi is what Moat knows about mochi-mqtt v2.7.9, the pinned
// MQTT engine (frozen upstream): the hooks and helpers that close its
// defects from outside, the two reach-ins into its unexported fields
// (checked by Verify at start-up: another layout stops Moat rather than
// silently switching a fix off), and WriteAck, the one builder of the
// acknowledgements Moat must write itself.
//
// Every defect Moat closes, where the fix lives, and the regression test
// (upstream issue numbers in parentheses):
//
//	defect                                                     fix                                  test
//	truncated MQTT 5 SUBSCRIBE panics the decoder (#501)       listen: framing reader, recover      listen TestMochi501; broker TestHostileInputs
//	no recover(): one session's panic kills the process        listen session recover;              listen TestPanicRecoveryAndCleanup;
//	  and its clean-up drops persistent sessions                 broker cleanupPanicked             broker TestPanickedSessionKeepsPersistentState
//	Will bypasses the write ACL (#503)                         auth OnConnect, OnWill               broker TestWill
//	client id takeover across users hands over the session     auth claim in OnConnectAuthenticate  broker TestClientIDTakeover, TestClientIDSquatting,
//	  and its queued messages without ACL (#398)                                                      TestClientIDRace
//	queued and in-flight messages resent without an ACL check  auth OnSessionEstablish, Swap,       broker TestQueuedMessagesMeetACLInForce
//	                                                             DeliveryGuard
//	publish ACL runs before topic-alias resolution             auth OnPublish re-check              broker TestTopicAliasCannotBypassACL
//	QoS 1/2 publish to $SYS or with a wildcard topic gets no   auth OnPacketRead, WriteAck          broker TestTableBPublish, TestHostileInputs
//	  answer
//	refused QoS 2 publish answered with a PUBACK               auth deny, store refuse, WriteAck    broker TestTableBPublish; store TestFailedWriteIsNotAcknowledged
//	an accept error (EMFILE) ends Serve for good               listen accept back-off               listen TestAcceptBackoff
//	no pre-CONNECT timeout, no write deadline                  listen connect_timeout, deadlines    listen TestConnectTimeout, TestStalledReaderDoesNotBlockClose
//	shared *tls.Config mutated to offer h2 on MQTT ports       listen clones the config             listen TestTLSOffers
//	retained map copied every second to find expired ones      StopRetainedSweep + broker heap      broker TestRetainedExpiryDeletesOnlyExpired; TestVerifyOnPinnedMochi
//	client packet ids collide with delivery ids (SUBACK 0x91)  PacketIDs                            TestClientPacketIDsDoNotCollideWithDeliveries
//	retained messages on SUBSCRIBE lack subscription ids       SubscriptionIDs                      broker TestRetainedMessagesCarrySubscriptionIdentifiers
//	DISCONNECT written to 3.1.1 clients                        Wire                                 broker TestReceiveMaximumExceeded, TestTakeoverDisconnectByVersion,
//	                                                                                                  TestShutdownDisconnectByVersion
//	acks echo the PUBLISH's user properties                    NoInheritedPropertiesOnAck           broker TestAckCarriesNoEchoedProperties
//	Request Problem Information 0 strips PUBLISH user props    Wire                                 broker TestRequestProblemInfoZeroKeepsPublishUserProperties
//	ack over the client's Maximum Packet Size dropped whole    Wire                                 broker TestAckFitsMaximumPacketSize
//	ack written before the fan-out that queues the message     store pending records                store TestPendingRecordRestored; e2e TestPersistCrashQueued
//	  for offline sessions (lost in a crash)
//	a hook cannot be removed (store after a dead mount)        store Hook.Switch + Adopt            e2e TestPersistMountDeath
//	Clients.GetByListener read-locks twice: a client leaving   broker closeListenerClients via      listen TestCloseUsesOwnClientDisconnect;
//	  during a listener's close deadlocks the stop               listen Options.CloseClients          broker TestCloseWhileClientsChurn
//	no hook before a delivery is queued but the read check     auth OnACLCheck asks limits Queues   broker TestOfflineQueuesBounded
//	an ended clean session is removed by id after a newcomer   auth awaitCleanEnd, MarkTakenOver    broker TestImmediateReconnectKeepsNewSession
//	  with that id attached: its subscriptions and entry go
package mochi
