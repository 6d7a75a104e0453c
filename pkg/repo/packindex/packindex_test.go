package packindex

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/svctest"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/repo"
)

// storePack stores a pack of n new chunks and, with announce, announces
// it as a transfer worker does.
func storePack(t *testing.T, ctx context.Context, r *repo.Repository, announce func(*contracts.PackStored), seed, n int) *repo.Pack {
	t.Helper()
	p := repo.NewPack()
	for i := range n {
		data := []byte(fmt.Sprintf("pack %d chunk %d", seed, i))
		id := r.ChunkID(data)
		if _, err := r.AddChunk(p, id, data, chunk.Zstd); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.PutPack(ctx, p); err != nil {
		t.Fatal(err)
	}
	if announce != nil {
		ann := &contracts.PackStored{Schema: contracts.SchemaVersion, Pack: p.ID.String()}
		for _, e := range p.Entries() {
			ann.Chunks = append(ann.Chunks, contracts.ChunkLoc{ID: e.ID.String(), Off: e.Loc.Off, Len: e.Loc.Len})
		}
		announce(ann)
	}
	return p
}

// waitIndexed waits until the index locates every chunk of p.
func waitIndexed(t *testing.T, x *Index, p *repo.Pack) {
	t.Helper()
	var ids []chunk.ID
	for _, e := range p.Entries() {
		ids = append(ids, e.ID)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		locs, found, err := x.Lookup(ids)
		if err != nil {
			t.Fatal(err)
		}
		all := true
		for i := range ids {
			if !found[i] || locs[i] != p.Entries()[i].Loc {
				all = false
			}
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pack %s not indexed", p.ID)
		}
	}
}

// The index follows announcements, continues from where it stopped after
// a restart, and rebuilds from the packs' trailers what the stream can no
// longer give it (here: a pack stored while it was down and never
// announced, after the stream was purged).
func TestPackIndexFollowsAndRebuilds(t *testing.T) {
	ctx, rt := svctest.Runtime(t, "dedup", 64<<10)
	announce := func(ann *contracts.PackStored) {
		if err := rt.Bus.Publish(ctx, contracts.PackStoredSubject(ann.Pack), ann, ann.Pack); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "index.db")
	log := slog.New(slog.DiscardHandler)
	open := func() (*Index, context.CancelFunc) {
		x, err := Open(path, rt.Repo.Config.ID, log)
		if err != nil {
			t.Fatal(err)
		}
		fctx, cancel := context.WithCancel(ctx)
		if err := x.Follow(fctx, rt.Bus, rt.Repo); err != nil {
			t.Fatal(err)
		}
		return x, func() { cancel(); time.Sleep(50 * time.Millisecond); x.Close() }
	}

	before := storePack(t, ctx, rt.Repo, announce, 0, 5) // before the index existed: replayed
	x, stop := open()
	waitIndexed(t, x, before)
	live := storePack(t, ctx, rt.Repo, announce, 1, 7)
	waitIndexed(t, x, live)
	// Asked for an unknown chunk: not found.
	if _, found, _ := x.Lookup([]chunk.ID{chunk.Hash([]byte("never stored"))}); found[0] {
		t.Fatal("an unknown chunk was located")
	}
	stop()

	// Down: one pack announced (replayed on restart), then the stream is
	// purged and a pack stored unannounced: only a rebuild finds it.
	missed := storePack(t, ctx, rt.Repo, announce, 2, 3)
	x, stop = open()
	waitIndexed(t, x, missed)
	stop()
	st, err := rt.Bus.JS.Stream(ctx, contracts.StreamPacks)
	if err != nil {
		t.Fatal(err)
	}
	announce(&contracts.PackStored{Schema: contracts.SchemaVersion, Pack: repo.NewPack().ID.String(),
		Chunks: []contracts.ChunkLoc{{ID: chunk.Hash([]byte("x")).String(), Len: 1}}})
	if err := st.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	silent := storePack(t, ctx, rt.Repo, nil, 3, 4)
	x, stop = open()
	defer stop()
	for _, p := range []*repo.Pack{before, live, missed, silent} {
		waitIndexed(t, x, p)
	}
	// The purged announcement named a pack that does not exist: indexed
	// from the store, the index does not hold it.
	if n := x.Len(); n != 5+7+3+4 {
		t.Fatalf("index holds %d chunks, want %d", n, 5+7+3+4)
	}
}

// Pack dates announced by merge (Object Lock) are kept, a later date over
// an earlier one and never the reverse, and survive a restart.
func TestPackIndexKeepsRetainDates(t *testing.T) {
	ctx, rt := svctest.Runtime(t, "dedup", 64<<10)
	path := filepath.Join(t.TempDir(), "index.db")
	x, err := Open(path, rt.Repo.Config.ID, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithCancel(ctx)
	if err := x.Follow(fctx, rt.Bus, rt.Repo); err != nil {
		t.Fatal(err)
	}
	p := repo.NewPack().ID
	later := time.Now().Add(48 * time.Hour).Truncate(time.Second)
	for _, until := range []time.Time{later, later.Add(-24 * time.Hour)} {
		msg := &contracts.PackRetained{Schema: contracts.SchemaVersion, Packs: []contracts.PackDate{{Pack: p.String(), Until: until}}}
		if err := rt.Bus.Publish(ctx, contracts.SubjectPackRetained, msg, ""); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for !x.RetainedUntil(p).Equal(later) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the earlier date, applied after, must not win
	if got := x.RetainedUntil(p); !got.Equal(later) {
		t.Fatalf("retained until %v, want %v", got, later)
	}
	if !x.RetainedUntil(repo.NewPack().ID).IsZero() {
		t.Fatal("a pack never announced has a date")
	}
	cancel()
	time.Sleep(50 * time.Millisecond)
	x.Close()
	x, err = Open(path, rt.Repo.Config.ID, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	if got := x.RetainedUntil(p); !got.Equal(later) {
		t.Fatalf("after a restart: %v", got)
	}
}
