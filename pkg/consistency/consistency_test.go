package consistency

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAgent records calls; each behaviour is scripted.
type fakeAgent struct {
	mu         sync.Mutex
	pingErr    error
	freezeErr  error
	freezeHang bool
	thawErr    error
	frozen     bool
	calls      []string
}

func (a *fakeAgent) log(s string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, s)
}

func (a *fakeAgent) Ping(ctx context.Context) error { a.log("ping"); return a.pingErr }

func (a *fakeAgent) Freeze(ctx context.Context, _ []string) (int, error) {
	a.log("freeze")
	if a.freezeHang {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	if a.freezeErr != nil {
		return 0, a.freezeErr
	}
	a.mu.Lock()
	a.frozen = true
	a.mu.Unlock()
	return 2, nil
}

func (a *fakeAgent) Thaw(ctx context.Context) (int, error) {
	a.log("thaw")
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.thawErr != nil {
		return 0, a.thawErr
	}
	a.frozen = false
	return 2, nil
}

func (a *fakeAgent) isFrozen() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.frozen
}

func (a *fakeAgent) trace() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return strings.Join(a.calls, " ")
}

func TestFreezeSnapshotThaw(t *testing.T) {
	a := &fakeAgent{}
	var frozenDuringSnap bool
	o, err := Around(context.Background(), a, Want{Mode: Filesystem}, time.Second, func(context.Context) error {
		frozenDuringSnap = a.isFrozen()
		return nil
	})
	if err != nil || o.Mode != Filesystem || o.Watchdog || !frozenDuringSnap || a.isFrozen() || a.trace() != "ping freeze thaw" {
		t.Fatalf("outcome %+v %v, frozen during snapshot %v, calls %q", o, err, frozenDuringSnap, a.trace())
	}
	if o.Frozen <= 0 || o.Frozen > time.Second {
		t.Fatalf("frozen window %v", o.Frozen)
	}
}

// No agent, an agent that does not answer, a freeze that fails or
// hangs: preferred falls back to crash with the reason and still takes
// the snapshot; required fails with the reason and takes none. The guest
// is never left frozen.
func TestFallbackAndRequired(t *testing.T) {
	cases := map[string]struct {
		agent *fakeAgent
		why   string
	}{
		"no agent":     {nil, "no agent channel"},
		"silent agent": {&fakeAgent{pingErr: errors.New("timeout")}, "did not answer"},
		"freeze fails": {&fakeAgent{freezeErr: errors.New("fs busy")}, "freeze failed"},
		"freeze hangs": {&fakeAgent{freezeHang: true}, "freeze failed"},
	}
	for name, c := range cases {
		for _, required := range []bool{false, true} {
			var agent Agent
			if c.agent != nil {
				agent = c.agent
			}
			snapped := false
			o, err := Around(context.Background(), agent, Want{Mode: Filesystem, Required: required}, 200*time.Millisecond, func(context.Context) error {
				snapped = true
				return nil
			})
			if o.Mode != Crash || !strings.Contains(o.Why, c.why) {
				t.Errorf("%s required=%v: outcome %+v", name, required, o)
			}
			if required && (!errors.Is(err, ErrRequired) || snapped || !strings.Contains(err.Error(), c.why)) {
				t.Errorf("%s required: err %v, snapshot taken %v", name, err, snapped)
			}
			if !required && (err != nil || !snapped) {
				t.Errorf("%s preferred: err %v, snapshot taken %v", name, err, snapped)
			}
			if c.agent != nil && c.agent.isFrozen() {
				t.Errorf("%s: left frozen", name)
			}
		}
	}
}

// A snapshot call that blocks past the maximum: the watchdog thaws while
// it is still blocked; the outcome is crash, and required fails.
func TestWatchdogThawsABlockedSnapshot(t *testing.T) {
	for _, required := range []bool{false, true} {
		a := &fakeAgent{}
		thawedWhileBlocked := false
		o, err := Around(context.Background(), a, Want{Mode: Filesystem, Required: required}, 100*time.Millisecond, func(context.Context) error {
			deadline := time.Now().Add(2 * time.Second)
			for a.isFrozen() && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			thawedWhileBlocked = !a.isFrozen()
			return nil
		})
		if !thawedWhileBlocked || !o.Watchdog || o.Mode != Crash || o.Frozen > time.Second {
			t.Fatalf("required=%v: outcome %+v, thawed while blocked %v", required, o, thawedWhileBlocked)
		}
		if required != errors.Is(err, ErrRequired) {
			t.Fatalf("required=%v: err %v", required, err)
		}
		if n := strings.Count(a.trace(), "thaw"); n != 1 {
			t.Fatalf("thawed %d times: %q", n, a.trace())
		}
	}
}

// A snapshot that fails still thaws; hooks run around the freeze and a
// failing pre-freeze hook counts as a failed freeze.
func TestErrorsAndHooks(t *testing.T) {
	a := &fakeAgent{}
	_, err := Around(context.Background(), a, Want{Mode: Filesystem}, time.Second, func(context.Context) error { return errors.New("begin failed") })
	if err == nil || a.isFrozen() || a.trace() != "ping freeze thaw" {
		t.Fatalf("a failed snapshot: %v, calls %q", err, a.trace())
	}
	var order []string
	a = &fakeAgent{}
	o, err := Around(context.Background(), a, Want{Mode: Application,
		PreFreeze: func(_ context.Context, ag Agent) error { order = append(order, "pre:"+a.trace()); return nil },
		PostThaw:  func(_ context.Context, ag Agent) error { order = append(order, "post:"+a.trace()); return nil },
	}, time.Second, func(context.Context) error { return nil })
	if err != nil || o.Mode != Application || strings.Join(order, ",") != "pre:ping,post:ping freeze thaw" {
		t.Fatalf("hooks: %+v %v %v", o, err, order)
	}
	// A failing pre-freeze hook: required fails without a freeze or a
	// snapshot; the post-thaw hook still runs (it undoes what pre began).
	a, order = &fakeAgent{}, nil
	snapped := false
	hooks := Want{Mode: Application, Required: true,
		PreFreeze: func(context.Context, Agent) error { return errors.New("database would not flush") },
		PostThaw:  func(context.Context, Agent) error { order = append(order, "post"); return nil }}
	o, err = Around(context.Background(), a, hooks, time.Second, func(context.Context) error { snapped = true; return nil })
	if !errors.Is(err, ErrRequired) || !strings.Contains(o.Why, "database would not flush") || strings.Contains(a.trace(), "freeze") || snapped || len(order) != 1 {
		t.Fatalf("failing pre-freeze hook: %+v %v %q, snapshot %v, post %v", o, err, a.trace(), snapped, order)
	}
	// Preferred: a crash-consistent snapshot, post-thaw after it.
	a, order, hooks.Required = &fakeAgent{}, nil, false
	o, err = Around(context.Background(), a, hooks, time.Second, func(context.Context) error { order = append(order, "snap"); return nil })
	if err != nil || o.Mode != Crash || !strings.Contains(o.Why, "pre-freeze hook: database would not flush") || strings.Join(order, ",") != "snap,post" || strings.Contains(a.trace(), "freeze") {
		t.Fatalf("failing pre-freeze hook, preferred: %+v %v %v %q", o, err, order, a.trace())
	}
	// Nothing to freeze (crash asked for, no agent): the hooks still run
	// around the snapshot, without an agent.
	for _, w := range []Want{{Mode: Crash}, {Mode: Filesystem}} {
		var agents []Agent
		order = nil
		w.PreFreeze = func(_ context.Context, ag Agent) error {
			order = append(order, "pre")
			agents = append(agents, ag)
			return nil
		}
		w.PostThaw = func(_ context.Context, ag Agent) error { order = append(order, "post"); return errors.New("exit 3") }
		o, err = Around(context.Background(), nil, w, time.Second, func(context.Context) error { order = append(order, "snap"); return nil })
		if err != nil || o.Mode != Crash || strings.Join(order, ",") != "pre,snap,post" || agents[0] != nil || !strings.Contains(o.Why, "post-thaw hook: exit 3") {
			t.Fatalf("hooks with nothing to freeze (%s): %+v %v %v", w.Mode, o, err, order)
		}
	}
	// Application without a pre-freeze hook is only filesystem.
	o, err = Around(context.Background(), &fakeAgent{}, Want{Mode: Application}, time.Second, func(context.Context) error { return nil })
	if err != nil || o.Mode != Filesystem || !strings.Contains(o.Why, "no pre-freeze hook") {
		t.Fatalf("application without a hook: %+v %v", o, err)
	}
	if m, err := Parse(""); m != Filesystem || err != nil {
		t.Fatal("the default mode is filesystem")
	}
	if _, err := Parse("quiesced"); err == nil {
		t.Fatal("an unknown mode was accepted")
	}
}

type fakeJournal struct {
	mu     sync.Mutex
	events []string
	fail   error
}

func (j *fakeJournal) Frozen(_ context.Context, thawBy time.Time) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.events = append(j.events, "frozen")
	return j.fail
}

func (j *fakeJournal) Thawed(context.Context) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.events = append(j.events, "thawed")
}

// The journal holds a record for exactly the frozen window; a journal
// that cannot record keeps the guest from being frozen at all.
func TestJournalBracketsTheFreeze(t *testing.T) {
	a, j := &fakeAgent{}, &fakeJournal{}
	var during []string
	_, err := Around(context.Background(), a, Want{Mode: Filesystem, Journal: j}, time.Second, func(context.Context) error {
		j.mu.Lock()
		during = append([]string(nil), j.events...)
		j.mu.Unlock()
		return nil
	})
	if err != nil || strings.Join(during, ",") != "frozen" || strings.Join(j.events, ",") != "frozen,thawed" {
		t.Fatalf("journal during %v, after %v, err %v", during, j.events, err)
	}
	// A thaw that fails keeps the record: the watchers try again.
	a, j = &fakeAgent{thawErr: errors.New("agent not responding")}, &fakeJournal{}
	o, err := Around(context.Background(), a, Want{Mode: Filesystem, Journal: j}, time.Second, func(context.Context) error { return nil })
	if err != nil || strings.Join(j.events, ",") != "frozen" || !strings.Contains(o.Why, "thaw failed") {
		t.Fatalf("failed thaw: journal %v, %+v %v", j.events, o, err)
	}
	a, j = &fakeAgent{}, &fakeJournal{fail: errors.New("kv down")}
	o, err = Around(context.Background(), a, Want{Mode: Filesystem, Journal: j}, time.Second, func(context.Context) error { return nil })
	if err != nil || o.Mode != Crash || !strings.Contains(o.Why, "could not be recorded") || strings.Contains(a.trace(), "freeze") {
		t.Fatalf("unrecordable freeze: %+v %v %q", o, err, a.trace())
	}
}
