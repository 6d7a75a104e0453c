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
	// freeze); PostThaw right after the thaw. Either may be nil.
	PreFreeze func(ctx context.Context) error
	PostThaw  func(ctx context.Context) error
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
	if w.Mode == Crash {
		return Outcome{Mode: Crash, Why: "crash consistency asked for"}, snap(ctx)
	}
	fallback := func(why string) (Outcome, error) {
		o := Outcome{Mode: Crash, Why: why}
		if w.Required {
			return o, fmt.Errorf("%w (%s): %s", ErrRequired, w.Mode, why)
		}
		return o, snap(ctx)
	}
	if agent == nil {
		return fallback("the guest has no agent channel")
	}
	pctx, cancel := context.WithTimeout(ctx, PingTimeout)
	err := agent.Ping(pctx)
	cancel()
	if err != nil {
		return fallback(fmt.Sprintf("the guest agent did not answer: %v", err))
	}
	if w.PreFreeze != nil {
		if err := w.PreFreeze(ctx); err != nil {
			return fallback(fmt.Sprintf("pre-freeze hook: %v", err))
		}
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
			return fallback(fmt.Sprintf("the freeze could not be recorded, so it was not made: %v", err))
		}
		defer w.Journal.Thawed(context.WithoutCancel(ctx))
	}
	// The freeze itself is bounded by max too: a hung agent (stopped,
	// or a filesystem that cannot sync) must not hold the backup.
	fctx, cancel := context.WithTimeout(ctx, max)
	mu.Lock()
	frozenAt = time.Now()
	mu.Unlock()
	_, err = agent.Freeze(fctx, w.Mountpoints)
	cancel()
	if err != nil {
		thaw(false) // a freeze that failed half-way leaves some frozen
		return fallback(fmt.Sprintf("freeze failed: %v", err))
	}
	timer := time.AfterFunc(max-min(max, time.Since(frozenAt)), func() { thaw(true) })
	snapErr := snap(ctx)
	timer.Stop()
	thaw(false)
	mu.Lock()
	o := Outcome{Mode: w.Mode, Frozen: window, Watchdog: watchdog}
	terr := thawErr
	mu.Unlock()
	if w.PostThaw != nil {
		if err := w.PostThaw(ctx); err != nil && o.Why == "" {
			o.Why = fmt.Sprintf("post-thaw hook: %v", err)
		}
	}
	if terr != nil {
		o.Why = fmt.Sprintf("thaw failed: %v", terr)
	}
	if o.Watchdog {
		// The snapshot call outlived the window: the point may postdate
		// the thaw.
		o.Mode, o.Why = Crash, fmt.Sprintf("the snapshot took longer than the %v freeze maximum: thawed first", max)
		if w.Required && snapErr == nil {
			return o, fmt.Errorf("%w (%s): %s", ErrRequired, w.Mode, o.Why)
		}
	}
	return o, snapErr
}
