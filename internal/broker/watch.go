package broker

import (
	"os"
	"syscall"
	"time"
)

// fileStamp identifies a file's content cheaply: an editor's rename, an
// in-place write or a Kubernetes secret's symlink swap all change it.
type fileStamp struct {
	ino   uint64
	size  int64
	mtime time.Time
	err   bool
}

func stamp(path string) fileStamp {
	st, err := os.Stat(path)
	if err != nil {
		return fileStamp{err: true}
	}
	s := fileStamp{size: st.Size(), mtime: st.ModTime()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		s.ino = sys.Ino
	}
	return s
}

// policyFiles lists the password and ACL files the configuration names.
func (b *Broker) policyFiles() []string {
	seen := map[string]bool{}
	var out []string
	if b.load != nil {
		out = append(out, b.cfg.Files...) // moat.conf and its include_dir files
	}
	for _, l := range b.cfg.Listeners {
		for _, p := range []string{l.Security.PasswordFile, l.Security.ACLFile} {
			if p != "" && !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// WatchFiles reloads when a password or ACL file changes, checking every
// interval; the returned func stops watching. A change that does not parse
// is logged and the previous files stay in force, as with SIGHUP.
func (b *Broker) WatchFiles(interval time.Duration) (stop func()) {
	files := b.policyFiles()
	done := make(chan struct{})
	if len(files) == 0 {
		return func() {}
	}
	last := make([]fileStamp, len(files))
	for i, f := range files {
		last[i] = stamp(f)
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-b.ctx.Done():
				return
			case <-t.C:
			}
			changed := false
			for i, f := range files {
				if s := stamp(f); s != last[i] {
					last[i], changed = s, true
				}
			}
			if changed {
				if err := b.Reload(); err != nil {
					b.log.Error(err.Error())
				}
			}
		}
	}()
	return func() { close(done) }
}
