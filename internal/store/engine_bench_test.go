//go:build enginebench

// Engine comparison behind the choice of bbolt or pebble: durable retained
// saves per second through one group-committing goroutine, 1 and 16
// concurrent writers. Run it where the store will live, e.g. on a gocryptfs
// mount:
//
//	MOAT_BENCH_DIR=/mnt go test -tags enginebench -run '^$' -bench Engine -count 5 ./internal/store
package store

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble"
	bolt "go.etcd.io/bbolt"
)

type benchKV struct {
	k, v []byte
	done chan error
}

// benchCommitter drains everything queued since the last commit into one
// write, syncs once, then releases every waiter.
func benchCommitter(q chan benchKV, commit func([]benchKV) error) {
	var batch []benchKV
	for first := range q {
		batch = append(batch[:0], first)
	drain:
		for {
			select {
			case kv, ok := <-q:
				if !ok {
					break drain
				}
				batch = append(batch, kv)
			default:
				break drain
			}
		}
		err := commit(batch)
		for _, kv := range batch {
			kv.done <- err
		}
	}
}

func engineBenchDir(b *testing.B) string {
	base := os.Getenv("MOAT_BENCH_DIR")
	if base == "" {
		return b.TempDir()
	}
	d, err := os.MkdirTemp(base, "enginebench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func runEngine(b *testing.B, writers int, commit func([]benchKV) error) {
	q := make(chan benchKV, 1024)
	go benchCommitter(q, commit)
	defer close(q)
	payload := make([]byte, 100)
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/writers + 1
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			done := make(chan error, 1)
			for i := 0; i < per; i++ {
				k := fmt.Appendf(nil, "sensor/%d/%d", w, i%1000)
				q <- benchKV{k: k, v: payload, done: done}
				if err := <-done; err != nil {
					b.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(per*writers)/b.Elapsed().Seconds(), "saves/s")
}

func BenchmarkEngine(b *testing.B) {
	for _, writers := range []int{1, 16} {
		b.Run(fmt.Sprintf("bbolt/w%d", writers), func(b *testing.B) {
			db, err := bolt.Open(filepath.Join(engineBenchDir(b), "b.db"), 0o600, &bolt.Options{
				NoFreelistSync: true, FreelistType: bolt.FreelistMapType,
			})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			name := []byte("r")
			runEngine(b, writers, func(batch []benchKV) error {
				return db.Update(func(tx *bolt.Tx) error {
					bk, err := tx.CreateBucketIfNotExists(name)
					if err != nil {
						return err
					}
					for _, kv := range batch {
						if err := bk.Put(kv.k, kv.v); err != nil {
							return err
						}
					}
					return nil
				})
			})
		})
		b.Run(fmt.Sprintf("pebble/w%d", writers), func(b *testing.B) {
			db, err := pebble.Open(filepath.Join(engineBenchDir(b), "p"), &pebble.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			runEngine(b, writers, func(batch []benchKV) error {
				wb := db.NewBatch()
				for _, kv := range batch {
					if err := wb.Set(kv.k, kv.v, nil); err != nil {
						return err
					}
				}
				return wb.Commit(pebble.Sync)
			})
		})
	}
}
