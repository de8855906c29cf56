package store

import (
	"errors"
	"fmt"

	"github.com/mochi-mqtt/server/v2/packets"
	bolt "go.etcd.io/bbolt"
)

// ErrInUse is returned by Open when another process holds the database:
// a running broker keeps it locked.
var ErrInUse = errors.New("the database is locked by another process (is moat serve running on this store?)")

// ImportResult counts what ImportRetained did.
type ImportResult struct {
	Imported int      // topics the store did not hold
	Replaced []string // topics it held, overwritten (replace)
	Kept     []string // topics it held, left as they were (no replace)
}

// ImportRetained writes retained messages in one transaction: when it
// returns nil all of them are on disk, otherwise none is. A topic the store
// holds already keeps its message unless replace is set. It is meant for a
// store no broker serves: the import runs before the broker starts.
func (s *Store) ImportRetained(msgs []packets.Packet, replace bool) (ImportResult, error) {
	var res ImportResult
	if err := s.Healthy(); err != nil {
		return res, err
	}
	if s.isClosed() {
		return res, ErrClosed
	}
	seen := make(map[string]struct{}, len(msgs))
	for i := range msgs {
		pk := &msgs[i]
		switch {
		case pk.TopicName == "":
			return res, fmt.Errorf("store %s: import: message %d has no topic", s.file, i)
		case len(pk.Payload) == 0:
			return res, fmt.Errorf("store %s: import: %s: an empty payload is not a retained message", s.file, describeKey([]byte(pk.TopicName)))
		case pk.FixedHeader.Qos > 2:
			return res, fmt.Errorf("store %s: import: %s: QoS %d", s.file, describeKey([]byte(pk.TopicName)), pk.FixedHeader.Qos)
		}
		if _, dup := seen[pk.TopicName]; dup {
			return res, fmt.Errorf("store %s: import: %s appears twice", s.file, describeKey([]byte(pk.TopicName)))
		}
		seen[pk.TopicName] = struct{}{}
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		ret := tx.Bucket(bucketRetained)
		for i := range msgs {
			pk := msgs[i]
			pk.FixedHeader.Type = packets.Publish
			pk.FixedHeader.Retain = true
			key := []byte(pk.TopicName)
			if ret.Get(key) != nil {
				if !replace {
					res.Kept = append(res.Kept, pk.TopicName)
					continue
				}
				res.Replaced = append(res.Replaced, pk.TopicName)
			} else {
				res.Imported++
			}
			if err := ret.Put(key, appendMessage(nil, &pk)); err != nil {
				return fmt.Errorf("%s: %w", describeKey(key), err)
			}
		}
		return nil
	})
	if err != nil {
		return ImportResult{}, fmt.Errorf("store %s: import: %w", s.file, err)
	}
	return res, nil
}
