// Package packindex is the index of a packed repository's chunks: which
// pack holds each, and where in it. Dedup asks it which chunks exist; only
// pkg/repo and this package know that packs exist.
package packindex

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	bolt "go.etcd.io/bbolt"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
)

// Index is the index of a packed repository: chunk id → where it
// is stored. It lives in a bbolt file on local disk, so memory stays
// bounded whatever the repository's size (the OS pages the file in), and
// a restarted instance continues where it stopped. It only caches what
// the packs' trailers say: it is fed by the PackStored announcements of
// the STRATA_PACKS stream and rebuilt from the packs themselves when the
// stream cannot bring it up to date (a new file; a stream that no longer
// reaches back far enough, or was lost with its NATS cluster).
//
// A chunk the index does not know is answered missing and stored again:
// an index that lags costs a duplicate, never a loss.
type Index struct {
	db  *bolt.DB
	log *slog.Logger
}

var (
	locBucket  = []byte("loc")
	retBucket  = []byte("ret") // pack id → retain-until (Unix seconds), Object Lock
	metaBucket = []byte("meta")
	seqKey     = []byte("seq")    // last stream sequence applied
	repoKey    = []byte("repo")   // repository id the index describes
	streamKey  = []byte("stream") // stream creation time (a new stream: rebuild)
)

// Start opens the index of r in the directory dir returns (a file per
// repository), brings it up to date and keeps it current until ctx ends,
// when it is closed. A repository without packs has no index: nil, and
// dir is not asked for (a loose repository needs no index directory).
func Start(ctx context.Context, r *repo.Repository, b *bus.Bus, dir func() (string, error), log *slog.Logger) (*Index, error) {
	if !r.Packed() {
		return nil, nil
	}
	d, err := dir()
	if err != nil {
		return nil, err
	}
	x, err := Open(filepath.Join(d, "strata-packindex-"+r.Config.ID+".db"), r.Config.ID, log)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { x.Close() })
	if err := x.Follow(ctx, b, r); err != nil {
		return nil, err
	}
	return x, nil
}

// Open opens (or creates) the index file of repository repoID.
// A file that describes another repository is started afresh.
func Open(path, repoID string, log *slog.Logger) (*Index, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 10 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open pack index %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(metaBucket)
		if meta != nil && string(meta.Get(repoKey)) != repoID {
			if err := tx.DeleteBucket(metaBucket); err != nil {
				return err
			}
			if err := tx.DeleteBucket(locBucket); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
				return err
			}
			meta = nil
		}
		if meta == nil {
			if meta, err = tx.CreateBucket(metaBucket); err != nil {
				return err
			}
			if err := meta.Put(repoKey, []byte(repoID)); err != nil {
				return err
			}
		}
		_, err := tx.CreateBucketIfNotExists(locBucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open pack index %s: %w", path, err)
	}
	return &Index{db: db, log: log}, nil
}

// Close closes the file.
func (x *Index) Close() error { return x.db.Close() }

func encodeLoc(l chunk.Loc) []byte {
	b := make([]byte, 24)
	copy(b, l.Pack[:])
	binary.BigEndian.PutUint32(b[16:], l.Off)
	binary.BigEndian.PutUint32(b[20:], l.Len)
	return b
}

func decodeLoc(b []byte) (chunk.Loc, bool) {
	var l chunk.Loc
	if len(b) != 24 {
		return l, false
	}
	copy(l.Pack[:], b)
	l.Off = binary.BigEndian.Uint32(b[16:])
	l.Len = binary.BigEndian.Uint32(b[20:])
	return l, l.InPack() && l.Len > 0
}

// Lookup returns where each of ids is stored; found[i] is false for an id
// the index does not know.
func (x *Index) Lookup(ids []chunk.ID) (locs []chunk.Loc, found []bool, err error) {
	locs, found = make([]chunk.Loc, len(ids)), make([]bool, len(ids))
	err = x.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(locBucket)
		for i, id := range ids {
			locs[i], found[i] = decodeLoc(b.Get(id[:]))
		}
		return nil
	})
	return locs, found, err
}

// retain records packs' retain-until dates (never an earlier one than it
// has) and that the stream was applied up to seq.
func (x *Index) retain(dates []contracts.PackDate, seq uint64) error {
	return x.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(retBucket)
		if err != nil {
			return err
		}
		for _, d := range dates {
			p, err := chunk.ParsePackID(d.Pack)
			if err != nil {
				continue
			}
			until := uint64(d.Until.Unix())
			if old := b.Get(p[:]); len(old) == 8 && binary.BigEndian.Uint64(old) >= until {
				continue
			}
			if err := b.Put(p[:], binary.BigEndian.AppendUint64(nil, until)); err != nil {
				return err
			}
		}
		if seq > 0 {
			return tx.Bucket(metaBucket).Put(seqKey, binary.BigEndian.AppendUint64(nil, seq))
		}
		return nil
	})
}

// RetainedUntil is the latest retain-until date announced for pack p
// (zero: none known — a pack never extended, or an index rebuilt from the
// packs, which carry no dates).
func (x *Index) RetainedUntil(p chunk.PackID) time.Time {
	var until time.Time
	x.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(retBucket); b != nil {
			if v := b.Get(p[:]); len(v) == 8 {
				until = time.Unix(int64(binary.BigEndian.Uint64(v)), 0)
			}
		}
		return nil
	})
	return until
}

// add records entries and, when seq > 0, that the stream was applied up
// to seq, in one transaction.
func (x *Index) add(entries []repo.PackEntry, seq uint64) error {
	return x.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(locBucket)
		for _, e := range entries {
			if err := b.Put(e.ID[:], encodeLoc(e.Loc)); err != nil {
				return err
			}
		}
		if seq > 0 {
			return tx.Bucket(metaBucket).Put(seqKey, binary.BigEndian.AppendUint64(nil, seq))
		}
		return nil
	})
}

func (x *Index) meta() (seq uint64, stream string) {
	x.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(metaBucket)
		if v := m.Get(seqKey); len(v) == 8 {
			seq = binary.BigEndian.Uint64(v)
		}
		stream = string(m.Get(streamKey))
		return nil
	})
	return seq, stream
}

// Len is the number of chunks indexed.
func (x *Index) Len() int {
	n := 0
	x.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(locBucket).Stats().KeyN; return nil })
	return n
}

// rebuild indexes every pack of the repository from its trailer, then
// records that the stream is applied up to seq (taken before the listing:
// announcements during the rebuild are applied again, harmlessly).
func (x *Index) rebuild(ctx context.Context, r *repo.Repository, seq uint64, stream string) error {
	start, packs, chunks := time.Now(), 0, 0
	err := r.ListPacks(ctx, 0, 256, func(p chunk.PackID, info objstore.Info) error {
		entries, err := r.PackIndex(ctx, p, info.Size)
		if err != nil {
			// A damaged pack's chunks are not offered for dedup: they are
			// stored again, and the verifier reports the pack.
			x.log.WarnContext(ctx, "pack not indexed", "pack", p.String(), "err", err)
			return nil
		}
		packs++
		chunks += len(entries)
		return x.add(entries, 0)
	})
	if err != nil {
		return fmt.Errorf("rebuild pack index: %w", err)
	}
	err = x.db.Update(func(tx *bolt.Tx) error {
		m := tx.Bucket(metaBucket)
		if err := m.Put(seqKey, binary.BigEndian.AppendUint64(nil, seq)); err != nil {
			return err
		}
		return m.Put(streamKey, []byte(stream))
	})
	x.log.InfoContext(ctx, "pack index rebuilt from the repository", "packs", packs, "chunks", chunks, "seconds", time.Since(start).Seconds())
	return err
}

// Follow brings the index up to date (replaying the stream, or rebuilding
// from the repository when the stream cannot) and keeps applying
// announcements until ctx ends.
func (x *Index) Follow(ctx context.Context, b *bus.Bus, r *repo.Repository) error {
	st, err := b.JS.Stream(ctx, contracts.StreamPacks)
	if err != nil {
		return fmt.Errorf("pack index: %w", err)
	}
	info := st.CachedInfo()
	created := info.Created.UTC().Format(time.RFC3339Nano)
	seq, stream := x.meta()
	// The stream holds everything after seq only if it is the same stream
	// and its first message is at most seq+1.
	if stream != created || info.State.FirstSeq > seq+1 || info.State.LastSeq < seq {
		seq = info.State.LastSeq
		if err := x.rebuild(ctx, r, seq, created); err != nil {
			return err
		}
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{contracts.SubjectPackStoredPrefix + ">", contracts.SubjectPackRetained},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy, OptStartSeq: seq + 1,
	})
	if err != nil {
		return fmt.Errorf("pack index: follow %s: %w", contracts.StreamPacks, err)
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		md, err := msg.Metadata()
		if err != nil {
			return
		}
		if msg.Subject() == contracts.SubjectPackRetained {
			var pr contracts.PackRetained
			if err := contracts.Decode(msg.Data(), &pr); err != nil {
				x.log.WarnContext(ctx, "pack dates ignored", "err", err)
			}
			if err := x.retain(pr.Packs, md.Sequence.Stream); err != nil {
				x.log.ErrorContext(ctx, "pack index write failed", "err", err)
			}
			return
		}
		var ps contracts.PackStored
		entries, err := decodePackStored(msg.Data(), &ps)
		if err != nil {
			// Nothing to index from it; the pack is found by the next
			// rebuild if it exists.
			x.log.WarnContext(ctx, "pack announcement ignored", "subject", msg.Subject(), "err", err)
			entries = nil
		}
		if err := x.add(entries, md.Sequence.Stream); err != nil {
			x.log.ErrorContext(ctx, "pack index write failed", "err", err)
		}
	})
	if err != nil {
		return fmt.Errorf("pack index: follow %s: %w", contracts.StreamPacks, err)
	}
	go func() {
		<-ctx.Done()
		cc.Stop()
	}()
	return nil
}

// decodePackStored decodes and checks an announcement into pack entries.
func decodePackStored(data []byte, ps *contracts.PackStored) ([]repo.PackEntry, error) {
	if err := contracts.Decode(data, ps); err != nil {
		return nil, err
	}
	p, err := chunk.ParsePackID(ps.Pack)
	if err != nil {
		return nil, err
	}
	entries := make([]repo.PackEntry, len(ps.Chunks))
	for i, c := range ps.Chunks {
		if entries[i].ID, err = chunk.ParseID(c.ID); err != nil {
			return nil, err
		}
		entries[i].Loc = chunk.Loc{Pack: p, Off: c.Off, Len: c.Len}
	}
	return entries, nil
}
