// Package consistency takes a snapshot with the guest's filesystems frozen
// through its agent (QEMU guest agent, VMware Tools), or says why it could
// not: the freeze → snapshot → thaw dance, once each, with the thaw
// guaranteed (deferred, and by a watchdog after a hard maximum even while
// the snapshot call is still blocked). oVirt's vdsm moved to exactly this
// shape, explicit freeze and thaw around the snapshot, because a quiesce
// flag's errors could not be told apart.
package consistency

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Mode is the consistency a backup asks for or got.
type Mode string

const (
	// Application: filesystems frozen, and the application flushed by a
	// pre-freeze hook.
	Application Mode = "application"
	// Filesystem: filesystems frozen through the guest's agent for the
	// instant of the snapshot: a restore needs no journal recovery.
	Filesystem Mode = "filesystem"
	// Crash: the disk as at a power cut.
	Crash Mode = "crash"
)

// Parse checks a mode ("" is the default: Filesystem, preferred).
func Parse(s string) (Mode, error) {
	switch m := Mode(s); m {
	case "":
		return Filesystem, nil
	case Application, Filesystem, Crash:
		return m, nil
	}
	return "", fmt.Errorf("consistency %q: want application, filesystem or crash", s)
}

// Agent freezes and thaws a guest's filesystems. Safe for concurrent use:
// the watchdog thaws while the snapshot call may still be running.
type Agent interface {
	// Ping answers when the agent is there and responsive.
	Ping(ctx context.Context) error
	// Freeze freezes the mountpoints (none: all) and says how many.
	Freeze(ctx context.Context, mountpoints []string) (int, error)
	// Thaw thaws every frozen filesystem (nothing frozen: no error).
	Thaw(ctx context.Context) (int, error)
}

// Want is what a backup asks for.
type Want struct {
	Mode Mode
	// Required: a failed freeze fails the backup; otherwise it falls back
	// to crash consistency and the record says why.
	Required    bool
	Mountpoints []string
	// PreFreeze runs right before the freeze (an error counts as a failed
	// freeze); PostThaw after the snapshot and the thaw, whenever PreFreeze
	// ran (even when it failed: it undoes what the first began). Both run
	// around a snapshot with nothing frozen too (crash asked for, no
	// agent): what they do on the host is still wanted. agent is the
	// guest's (nil when it has none or it did not answer). Either may be
	// nil.
	PreFreeze func(ctx context.Context, agent Agent) error
	PostThaw  func(ctx context.Context, agent Agent) error
	// Journal, when set, records the freeze where another process sees
	// it: a snapshotter that dies between freeze and thaw leaves the
	// record, and whoever watches the journal thaws the guest once
	// ThawBy passes (the in-process watchdog died with it).
	Journal Journal
}

// Journal records freezes in progress (see Want.Journal).
type Journal interface {
	// Frozen is called right before the freeze; an error keeps the guest
	// from being frozen (the backup falls back, or fails if required).
	Frozen(ctx context.Context, thawBy time.Time) error
	// Thawed is called once the guest is thawed.
	Thawed(ctx context.Context)
}

// Outcome is what a snapshot got.
type Outcome struct {
	Mode Mode
	// Why says how it came to Mode when that is not what was asked for
	// (or, for crash, that crash was asked for).
	Why string
	// Frozen is how long the filesystems were frozen.
	Frozen time.Duration
	// Watchdog: the thaw came from the watchdog (the snapshot call was
	// still running at the maximum).
	Watchdog bool
}

// Timeouts of the agent's answers.
const (
	PingTimeout = 3 * time.Second
	thawTimeout = 10 * time.Second
)

// ErrRequired wraps the reason a required consistency was not reached.
var ErrRequired = errors.New("the consistency asked for is required")

// Around takes the snapshot (snap) with the consistency w asks for;
// agent nil means the guest has none. max bounds the frozen window: at
// max the watchdog thaws, whatever snap is doing. The outcome is valid
// whenever snap ran, even with an error.
func Around(ctx context.Context, agent Agent, w Want, max time.Duration, snap func(ctx context.Context) error) (Outcome, error) {
	preRan := false
	pre := func(agent Agent) error {
		preRan = true
		if w.PreFreeze == nil {
			return nil
		}
		if err := w.PreFreeze(ctx, agent); err != nil {
			return fmt.Errorf("pre-freeze hook: %w", err)
		}
		return nil
	}
	post := func(o *Outcome, agent Agent) {
		if !preRan || w.PostThaw == nil {
			return
		}
		if err := w.PostThaw(ctx, agent); err != nil {
			o.Why = JoinWhy(o.Why, fmt.Sprintf("post-thaw hook: %v", err))
		}
	}
	// unfrozen takes the snapshot with nothing frozen, hooks around it.
	unfrozen := func(o Outcome, agent Agent) (Outcome, error) {
		if !preRan {
			if err := pre(agent); err != nil {
				o.Why = JoinWhy(o.Why, err.Error())
			}
		}
		err := snap(ctx)
		post(&o, agent)
		return o, err
	}
	if w.Mode == Crash {
		return unfrozen(Outcome{Mode: Crash, Why: "crash consistency asked for"}, agent)
	}
	fallback := func(why string, agent Agent) (Outcome, error) {
		o := Outcome{Mode: Crash, Why: why}
		if w.Required {
			post(&o, agent)
			return o, fmt.Errorf("%w (%s): %s", ErrRequired, w.Mode, o.Why)
		}
		return unfrozen(o, agent)
	}
	if agent == nil {
		return fallback("the guest has no agent channel", nil)
	}
	pctx, cancel := context.WithTimeout(ctx, PingTimeout)
	err := agent.Ping(pctx)
	cancel()
	if err != nil {
		return fallback(fmt.Sprintf("the guest agent did not answer: %v", err), nil)
	}
	if err := pre(agent); err != nil {
		return fallback(err.Error(), agent)
	}
	var (
		once     sync.Once
		frozenAt time.Time
		window   time.Duration
		thawErr  error
		watchdog bool
		mu       sync.Mutex
	)
	thaw := func(byWatchdog bool) {
		once.Do(func() {
			tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), thawTimeout)
			defer cancel()
			_, err := agent.Thaw(tctx)
			mu.Lock()
			defer mu.Unlock()
			if !frozenAt.IsZero() {
				window = time.Since(frozenAt)
			}
			thawErr, watchdog = err, byWatchdog
		})
	}
	if w.Journal != nil {
		if err := w.Journal.Frozen(ctx, time.Now().Add(max)); err != nil {
			return fallback(fmt.Sprintf("the freeze could not be recorded, so it was not made: %v", err), agent)
		}
		// The record goes only once a thaw answered: a thaw that failed
		// (a hung agent that may still carry out the freeze later) leaves
		// it for the watchers, who try again until one succeeds.
		defer func() {
			mu.Lock()
			terr := thawErr
			mu.Unlock()
			if terr == nil {
				w.Journal.Thawed(context.WithoutCancel(ctx))
			}
		}()
	}
	// The freeze itself is bounded by max too: a hung agent (stopped,
	// or a filesystem that cannot sync) must not hold the backup.
	fctx, cancel := context.WithTimeout(ctx, max)
	freezeStart := time.Now()
	_, err = agent.Freeze(fctx, w.Mountpoints)
	cancel()
	if err != nil {
		thaw(false) // a freeze that failed half-way leaves some frozen
		return fallback(fmt.Sprintf("freeze failed: %v", err), agent)
	}
	// The window is counted from the agent's answer to the freeze (the
	// guest's fsfreeze hooks and its sync come before the filesystems
	// stop) to its answer to the thaw; the maximum from the freeze's start.
	mu.Lock()
	frozenAt = time.Now()
	mu.Unlock()
	timer := time.AfterFunc(max-min(max, time.Since(freezeStart)), func() { thaw(true) })
	snapErr := snap(ctx)
	timer.Stop()
	thaw(false)
	mu.Lock()
	o := Outcome{Mode: w.Mode, Frozen: window, Watchdog: watchdog}
	terr := thawErr
	mu.Unlock()
	if o.Mode == Application && w.PreFreeze == nil {
		o.Mode, o.Why = Filesystem, "no pre-freeze hook ran: the application was not asked to flush (beyond the guest's own fsfreeze hooks)"
	}
	if terr != nil {
		o.Why = JoinWhy(o.Why, fmt.Sprintf("thaw failed: %v", terr))
	}
	post(&o, agent)
	if o.Watchdog {
		// The snapshot call outlived the window: the point may postdate
		// the thaw.
		o.Mode, o.Why = Crash, JoinWhy(fmt.Sprintf("the snapshot took longer than the %v freeze maximum: thawed first", max), o.Why)
		if w.Required && snapErr == nil {
			return o, fmt.Errorf("%w (%s): %s", ErrRequired, w.Mode, o.Why)
		}
	}
	return o, snapErr
}

// JoinWhy appends a reason to the reasons a consistency outcome already
// gives ("; " between them).
func JoinWhy(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}
