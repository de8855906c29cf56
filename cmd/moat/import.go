package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/cryptfs"
	"github.com/moat-mqtt/moat/internal/mosqdb"
	"github.com/moat-mqtt/moat/internal/store"
)

const importUsage = "usage: moat import mosquitto-db -c FILE [-replace] [-n] [-cipher-dir DIR -key-file FILE] MOSQUITTO_DB"

// listCap bounds how many topics a report names, maxTopicShown how much
// of each.
const (
	listCap       = 20
	maxTopicShown = 200
)

func runImport(args []string, io stdio) int {
	if len(args) == 0 || args[0] != "mosquitto-db" {
		fmt.Fprintln(io.err, importUsage)
		return 2
	}
	fs := newFlags("import mosquitto-db", io)
	path := fs.String("c", "", "Moat's configuration file: the store to import into")
	replace := fs.Bool("replace", false, "overwrite topics the store already holds (default: keep them)")
	dry := fs.Bool("n", false, "report what would be imported; write nothing")
	cipherDir := fs.String("cipher-dir", "", "the old gocryptfs directory holding mosquitto.db (mounted read-only)")
	keyFile := fs.String("key-file", "", "file whose first line is the old gocryptfs password")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	src := fs.Arg(0)
	if *cipherDir != "" && src == "" {
		src = "mosquitto.db"
	}
	if *path == "" || src == "" || fs.NArg() > 1 || (*cipherDir == "") != (*keyFile == "") {
		fmt.Fprintln(io.err, importUsage)
		return 2
	}
	cfg, err := config.Load(*path, os.Getenv)
	if err != nil {
		printErr(io, err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(io.err, &slog.HandlerOptions{Level: slog.LevelWarn}))

	var db *mosqdb.DB
	if *cipherDir != "" {
		db, err = readEncrypted(cfg, *cipherDir, *keyFile, src, log)
	} else {
		db, err = mosqdb.ReadFile(src)
	}
	if err != nil {
		printErr(io, fmt.Errorf("nothing imported: %w", err))
		return 1
	}
	now := time.Now().Unix()
	msgs, expired := toPackets(db, now)
	w := io.out
	fmt.Fprintf(w, "%s: %d retained messages (mosquitto format %d)", src, len(db.Retained), db.Version)
	if expired > 0 {
		fmt.Fprintf(w, ", %d expired (skipped)", expired)
	}
	fmt.Fprintln(w)
	if n := db.Sessions + db.Subscriptions + db.Queued; n > 0 {
		fmt.Fprintf(w, "not imported: %d sessions, %d subscriptions, %d queued messages (clients subscribe again when they reconnect)\n",
			db.Sessions, db.Subscriptions, db.Queued)
	}
	topics := make([]string, len(msgs))
	for i := range msgs {
		topics[i] = msgs[i].TopicName
	}
	unreadable, err := broker.UnreadableTopics(cfg, topics)
	if err != nil {
		printErr(io, fmt.Errorf("nothing imported: %w", err))
		return 1
	}
	if len(unreadable) > 0 {
		fmt.Fprintf(w, "warning: no user of this configuration may read %d of these topics (password_file and acl_file):\n", len(unreadable))
		printList(w, unreadable)
	}
	if *dry {
		fmt.Fprintf(w, "dry run (-n): nothing written\n")
		return 0
	}

	off, err := broker.OpenStore(broker.Options{Config: cfg, Logger: log, Env: os.Getenv})
	if err != nil {
		if errors.Is(err, store.ErrInUse) || errors.Is(err, cryptfs.ErrServed) {
			fmt.Fprintln(io.err, "moat: refusing to import while the store is in use: stop moat serve, import, then start it again")
		}
		printErr(io, fmt.Errorf("nothing imported: %w", err))
		return 1
	}
	res, err := off.Store().ImportRetained(msgs, *replace)
	if cerr := off.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing the store after the import: %w", cerr)
	}
	if err != nil {
		printErr(io, fmt.Errorf("nothing imported: %w", err))
		return 1
	}
	fmt.Fprintf(w, "imported %d retained messages into %s\n", res.Imported+len(res.Replaced), filepath.Join(cfg.Persistence.Location, storeFile(cfg)))
	if len(res.Replaced) > 0 {
		fmt.Fprintf(w, "replaced %d topics the store already held:\n", len(res.Replaced))
		printList(w, res.Replaced)
	}
	if len(res.Kept) > 0 {
		fmt.Fprintf(w, "kept %d topics the store already held (-replace overwrites them):\n", len(res.Kept))
		printList(w, res.Kept)
	}
	return 0
}

func storeFile(cfg *config.Config) string {
	if cfg.Persistence.File != "" {
		return cfg.Persistence.File
	}
	return "moat.db"
}

// readEncrypted mounts the old gocryptfs directory read-only in a private
// temporary directory, reads the file and unmounts.
func readEncrypted(cfg *config.Config, cipherDir, keyFile, name string, log *slog.Logger) (*mosqdb.DB, error) {
	bin, err := cryptfs.Find(cfg.Persistence.GocryptfsPath)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "moat-import-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, err := cryptfs.Start(ctx, cryptfs.Options{
		Binary: bin, CipherDir: cipherDir, MountPoint: filepath.Join(tmp, "plain"), KeyFile: keyFile,
		ReadOnly: true, Logger: log.With("component", "gocryptfs"),
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cipherDir, err)
	}
	defer m.Close()
	f, err := m.Root().Open(name)
	if err != nil {
		return nil, fmt.Errorf("%s (decrypted): %w", cipherDir, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, mosqdb.MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s (decrypted): %w", cipherDir, err)
	}
	display := filepath.Join(cipherDir, name) + " (decrypted)"
	if len(data) > mosqdb.MaxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", display, mosqdb.MaxFileSize)
	}
	return mosqdb.Parse(display, data)
}

// toPackets turns mosquitto's retained messages into mochi's, dropping
// those whose expiry has passed. A message with MQTT 5 properties or an
// expiry is stored as MQTT 5 so both survive restarts.
func toPackets(db *mosqdb.DB, now int64) ([]packets.Packet, int) {
	out := make([]packets.Packet, 0, len(db.Retained))
	expired := 0
	for _, m := range db.Retained {
		if m.Expiry != 0 && m.Expiry <= now {
			expired++
			continue
		}
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Publish, Retain: true, Qos: m.QoS},
			TopicName:       m.Topic,
			Payload:         m.Payload,
			Origin:          m.SourceID,
			Created:         now,
			ProtocolVersion: 4,
			Properties: packets.Properties{
				PayloadFormat:     m.Properties.PayloadFormat,
				PayloadFormatFlag: m.Properties.PayloadFormatSet,
				ContentType:       m.Properties.ContentType,
				ResponseTopic:     m.Properties.ResponseTopic,
				CorrelationData:   m.Properties.CorrelationData,
			},
		}
		for _, u := range m.Properties.User {
			pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: u.Key, Val: u.Val})
		}
		if m.Expiry != 0 {
			pk.Expiry = m.Expiry
			pk.Properties.MessageExpiryInterval = uint32(min(m.Expiry-now, 1<<32-1))
		}
		if m.Expiry != 0 || !m.Properties.Empty() {
			pk.ProtocolVersion = 5
		}
		out = append(out, pk)
	}
	return out, expired
}

func printList(w io.Writer, items []string) {
	for i, s := range items {
		if i == listCap {
			fmt.Fprintf(w, "  ... and %d more\n", len(items)-listCap)
			return
		}
		if len(s) > maxTopicShown {
			fmt.Fprintf(w, "  %q... (%d bytes)\n", s[:maxTopicShown], len(s))
			continue
		}
		fmt.Fprintf(w, "  %q\n", s)
	}
}
