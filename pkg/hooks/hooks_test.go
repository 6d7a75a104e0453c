package hooks

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
)

type fakeGuest struct {
	argv []string
	exit int
	out  string
	err  error
}

func (g *fakeGuest) Exec(ctx context.Context, argv []string) (int, []byte, error) {
	g.argv = argv
	return g.exit, []byte(g.out), g.err
}

func script(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
}

// Host hooks run only from the hooks directory, with the backup's
// environment; their exit status, output and time limit are reported.
func TestHostHooks(t *testing.T) {
	dir := t.TempDir()
	script(t, dir, "ok", `echo "$1 $STRATA_VM"; echo oops >&2`)
	script(t, dir, "fails", "exit 3")
	script(t, dir, "hangs", "sleep 30")
	script(t, dir, "chatty", "yes | head -c 1000000")
	os.WriteFile(filepath.Join(dir, "notexec"), []byte("#!/bin/sh\n"), 0o644)
	r := Runner{Dir: dir, Env: []string{"STRATA_VM=vm1"}}
	ctx := context.Background()
	run := func(cmd string, timeout int) contracts.HookRun {
		runs, _ := r.Run(ctx, PreFreeze, []contracts.Hook{{Command: cmd, Host: true, TimeoutSec: timeout}}, nil)
		return runs[0]
	}
	if got := run("ok 'two words'", 0); got.Exit != 0 || got.Error != "" || got.Output != "two words vm1\noops\n" || got.Phase != PreFreeze || !got.Host {
		t.Fatalf("ok: %+v", got)
	}
	if got := run("fails", 0); got.Exit != 3 || got.Error != "exit status 3" {
		t.Fatalf("fails: %+v", got)
	}
	start := time.Now()
	if got := run("hangs", 1); got.Exit != -1 || !strings.Contains(got.Error, "timed out after 1s") || time.Since(start) > 10*time.Second {
		t.Fatalf("hangs: %+v after %v", got, time.Since(start))
	}
	if got := run("chatty", 0); got.Exit != 0 || len(got.Output) != contracts.HookOutputMax {
		t.Fatalf("chatty: exit %d, %d bytes of output kept", got.Exit, len(got.Output))
	}
	for _, cmd := range []string{"/bin/sh -c true", "../ok", "notexec", "missing"} {
		if got := run(cmd, 0); got.Error == "" || got.Exit != -1 {
			t.Fatalf("%q ran: %+v", cmd, got)
		}
	}
	if got := (Runner{}).one(ctx, PostThaw, contracts.Hook{Command: "ok", Host: true}, nil); !strings.Contains(got.Error, "STRATA_HOOKS_DIR") {
		t.Fatalf("host hooks without a directory: %+v", got)
	}
}

// Guest hooks go through the agent, split like a shell; without an agent
// they fail with the reason. A failing pre-freeze hook stops its phase; a
// post-thaw phase runs every hook.
func TestGuestHooksAndPhases(t *testing.T) {
	g := &fakeGuest{out: "flushed"}
	runs, err := Runner{}.Run(context.Background(), PreFreeze, []contracts.Hook{{Command: `sh -c 'psql -c "CHECKPOINT"'`}}, g)
	if err != nil || strings.Join(g.argv, "|") != `sh|-c|psql -c "CHECKPOINT"` || runs[0].Output != "flushed" {
		t.Fatalf("guest hook: %v %q %+v", err, g.argv, runs)
	}
	if runs, err := (Runner{}).Run(context.Background(), PreFreeze, []contracts.Hook{{Command: "sync"}}, nil); !errors.Is(err, ErrFailed) || !strings.Contains(runs[0].Error, "no agent") {
		t.Fatalf("guest hook without an agent: %v %+v", err, runs)
	}
	bad := &fakeGuest{exit: 1}
	two := []contracts.Hook{{Command: "first"}, {Command: "second"}}
	if runs, err := (Runner{}).Run(context.Background(), PreFreeze, two, bad); err == nil || len(runs) != 1 || !strings.Contains(err.Error(), `"first"`) {
		t.Fatalf("a failing pre-freeze hook: %v %+v", err, runs)
	}
	if runs, err := (Runner{}).Run(context.Background(), PostThaw, two, bad); err == nil || len(runs) != 2 {
		t.Fatalf("a failing post-thaw hook: %v %+v", err, runs)
	}
}
