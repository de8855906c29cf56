// Package acl parses mosquitto 2.0 aclfiles and decides topic access.
//
// # Syntax (as mosquitto 2.0.11 parses it)
//
//   - A line is a comment only when '#' is in column 0. Trailing whitespace and
//     CR are stripped; leading spaces are allowed; blank lines are ignored.
//   - Fields are separated by spaces (runs of spaces count as one, as with
//     strtok). A tab or another control character anywhere in a non-comment
//     line is an error, and so is an indented "# comment", and so is a line
//     that is not valid UTF-8 (outside comments).
//   - Keywords are case-sensitive: topic, pattern, user.
//   - "topic [read|write|readwrite|deny] <topic>": without an access word the
//     access is readwrite; <topic> is the rest of the line, trimmed, and may
//     contain spaces. "topic read" alone is the topic named "read" with
//     readwrite access (a warning says so). <topic> must be a valid filter.
//   - "user <name>" (rest of the line) starts a user section; a repeated name
//     adds to the same section. Topic lines before the first user line form
//     the anonymous section.
//   - "pattern [access] <topic>" applies to every client, whichever section
//     it appears in. "%u" and "%c" are replaced, as plain text anywhere in the
//     topic, by the username and the client id ("pre-%u/#", "x/%u%u/#"). A
//     pattern with neither gives a warning. Topic lines are never substituted.
//
// Every error is reported as "aclfile FILE:LINE: reason"; all of them are
// collected. A file with an error yields no Rules, so a reload that fails
// keeps the previous snapshot (mosquitto instead ran with no ACL at all).
//
// # Decision (CanRead, CanWrite; mosquitto_acl_check_default)
//
//  1. Special cases first: a topic that is not a valid topic name is denied;
//     "$share..." topics are denied (shared subscriptions exist only in
//     SUBSCRIBE); writes to "$SYS..." are denied (Moat has no bridges, so
//     mosquitto's bridge-state exception does not apply). An aclfile with no
//     rules denies everything (a non-strict SUBSCRIBE is still granted, as in
//     mosquitto; nothing is then delivered).
//  2. The client's own list: the user section named by its username, or the
//     anonymous section when it has no username. A username without a
//     section has no list. Deny rules are tried first, then the others in
//     file order; the first rule whose filter matches decides: deny → deny,
//     access bit present → allow, bit missing → try the next rule.
//  3. If patterns exist and the username or client id contains '+' or '#',
//     deny. Otherwise the patterns, deny rules first, decide in the same way.
//     Patterns using %u are skipped for clients without a username (and, as
//     a hardening beyond mosquitto, with an empty one); patterns using %c are
//     skipped for an empty client id.
//  4. Anything else is denied. So a user-list allow beats a pattern deny.
//
// A rule whose written filter does not start with '$' never matches a topic
// starting with '$'. For patterns this is decided on the text as written,
// so a username "$SYS" does not turn "%u/#" into a $SYS grant.
//
// # Subscribe (CanSubscribe)
//
// A "$share/<group>/" prefix is stripped first; a malformed shared filter or
// an invalid filter is refused.
//
// Non-strict mode is mosquitto 2.0: every valid filter is granted, and each
// delivery (retained messages included) is filtered by CanRead.
//
// Strict mode (Moat's default) grants a filter only when a rule granting read
// COVERS it: every topic the filter can match is matched by the rule
// (FilterCovers). "alice/+/temp" is covered by "alice/#"; "#" and "+/x" are
// not. The algorithm above is applied with "match" meaning "covers": own list
// then patterns, deny rules first. A deny rule decides only when it covers
// the whole filter; a deny that overlaps part of a granted filter is left to
// the per-delivery read check, which removes those topics. A rule without
// read access that covers the filter does not decide. CanRead still runs for
// every delivery in both modes.
//
// # Identities
//
// With %u/%c patterns, usernames and client ids take part in topic matching.
// CheckIdentity refuses the values that let a client reach another tree;
// Rules.CheckClient applies it to what the file's patterns substitute.
//
// # Explain
//
// Explain runs the same check and returns the deciding rule (file, line, the
// line as written) or the special case that decided ($SYS write, '+'/'#' in
// an identity, no rules, invalid topic), or "no rule matched: deny".
//
// # Concurrency and cost
//
// Rules are immutable after Parse; swap whole snapshots (atomic.Pointer) on
// reload. CanRead, CanWrite and CanSubscribe do not allocate: %u/%c are
// compared in place, level by level, without building the substituted filter.
// User sections are found through a map.
package acl
