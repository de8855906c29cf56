package broker

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"
	"syscall"
	"time"
)

// maxWatchedSize caps what the watcher hashes; the loaders refuse larger
// files anyway.
const maxWatchedSize = 64 << 20

// errChangedDuringLoad refuses a reload whose files changed while they
// were read: what was read may be half of an edit.
var errChangedDuringLoad = errors.New("files changed while they were read; waiting until they are stable")

// fileStamp identifies a file's state: an editor's rename (inode), an
// in-place write (size, mtime, content) or a Kubernetes secret's symlink
// swap all change it. The content hash catches rewrites that keep size and
// a coarse mtime.
type fileStamp struct {
	ino   uint64
	size  int64
	mtime time.Time
	sum   [sha256.Size]byte
	err   bool
}

func stamp(path string) fileStamp {
	f, err := os.Open(path)
	if err != nil {
		return fileStamp{err: true}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fileStamp{err: true}
	}
	s := fileStamp{size: st.Size(), mtime: st.ModTime()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		s.ino = sys.Ino
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, maxWatchedSize+1)); err != nil {
		return fileStamp{err: true}
	}
	h.Sum(s.sum[:0])
	return s
}

func stamps(paths []string) []fileStamp {
	out := make([]fileStamp, len(paths))
	for i, p := range paths {
		out[i] = stamp(p)
	}
	return out
}

// watchFiles calls apply when any of paths has changed and has then stayed
// the same (inode, size, mtime and content) for a whole interval, so a file
// written in several steps is applied only once complete; a rename puts a
// whole file in place at once and is applied the same way. The files are
// polled every interval/4 until ctx ends.
//
// apply reads the files and, before putting what it read in force, calls
// stable: false means a file changed since it was judged stable (what was
// read may be half an edit), and apply must then return
// errChangedDuringLoad without applying anything; the watcher retries once
// the files are stable again. Any other error from apply is logged once per
// change.
func watchFiles(ctx context.Context, log *slog.Logger, paths []string, interval time.Duration, apply func(stable func() bool) error) {
	watchFilesFrom(ctx, log, paths, stamps(paths), interval, apply)
}

// watchFilesFrom is watchFiles from applied, the files' state when what is
// in force was read: taken by the caller before it starts the watch, so a
// change made right after is never mistaken for the starting state.
func watchFilesFrom(ctx context.Context, log *slog.Logger, paths []string, applied []fileStamp, interval time.Duration, apply func(stable func() bool) error) {
	paths = slices.Clone(paths)
	seen := applied
	seenAt := time.Now()
	t := time.NewTicker(max(interval/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := stamps(paths)
		if !slices.Equal(now, seen) {
			seen, seenAt = now, time.Now() // changed: the interval starts again
			continue
		}
		if slices.Equal(now, applied) || time.Since(seenAt) < interval {
			continue
		}
		err := apply(func() bool { return slices.Equal(stamps(paths), now) })
		if errors.Is(err, errChangedDuringLoad) {
			continue // the next poll sees the change
		}
		applied = now
		if err != nil {
			log.Error(err.Error())
		}
	}
}

// policyFiles lists the password and ACL files the configuration in force
// names (and its own files when a reload reads them). Called with b.mu held.
func (b *Broker) policyFiles() []string {
	seen := map[string]bool{}
	var out []string
	if b.load != nil {
		out = append(out, b.live.Files...) // moat.conf and its include_dir files
	}
	for _, l := range b.live.Listeners {
		for _, p := range []string{l.Security.PasswordFile, l.Security.ACLFile} {
			if p != "" && !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// WatchFiles reloads when a password or ACL file changes and has been
// stable for interval; the returned func stops watching. A change that
// does not parse is logged and the previous files stay in force, as with
// SIGHUP.
func (b *Broker) WatchFiles(interval time.Duration) (stop func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.watchEvery = interval
	b.rewatch()
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.watchEvery = 0
		b.rewatch()
	}
}

// rewatch (re)starts the file watch on the files the configuration in force
// names: a reload may have changed them. Called with b.mu held.
func (b *Broker) rewatch() {
	files := b.policyFiles()
	if b.watchEvery <= 0 {
		files = nil
	}
	if b.stopWatch != nil && slices.Equal(files, b.watched) {
		return // same files: the running watch keeps its state
	}
	if b.stopWatch != nil {
		b.stopWatch()
		b.stopWatch = nil
	}
	b.watched = files
	if len(files) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(b.ctx)
	b.stopWatch = cancel
	interval := b.watchEvery
	from := stamps(files)
	b.run.goNamed("file watch", func() { watchFilesFrom(ctx, b.log, files, from, interval, b.reload) })
}
