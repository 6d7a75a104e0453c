// Package hooks runs a backup's pre-freeze and post-thaw hooks
// (contracts.Hook): in the guest through its agent's guest-exec, or on the
// snapshotter's host from an administrator's hooks directory. Each run is
// bounded by its timeout and reported as a contracts.HookRun (exit status,
// the end of its output, duration), kept in the backup record.
package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/shlex"

	"github.com/strata-backup/strata/contracts"
)

// Phases.
const (
	PreFreeze = "pre-freeze"
	PostThaw  = "post-thaw"
)

// Guest runs a program inside the guest (the QEMU guest agent's
// guest-exec) until it exits or ctx ends, returning its exit status and
// output (stdout then stderr).
type Guest interface {
	Exec(ctx context.Context, argv []string) (exit int, output []byte, err error)
}

// Runner runs hooks for one backup.
type Runner struct {
	// Dir is the host's hooks directory (STRATA_HOOKS_DIR); empty: host
	// hooks are refused.
	Dir string
	// Env is added to a host hook's environment (STRATA_VM=…).
	Env []string
}

// ErrFailed wraps every hook failure.
var ErrFailed = errors.New("hook failed")

// Run runs the hooks of a phase in order and returns what each did. The
// first failure stops a pre-freeze phase (it counts as a failed freeze);
// post-thaw hooks all run. The error names the failed hook.
func (r Runner) Run(ctx context.Context, phase string, hs []contracts.Hook, guest Guest) ([]contracts.HookRun, error) {
	var runs []contracts.HookRun
	var first error
	for _, h := range hs {
		run := r.one(ctx, phase, h, guest)
		runs = append(runs, run)
		if run.Error != "" && first == nil {
			first = fmt.Errorf("%w: %s %q: %s", ErrFailed, phase, h.Command, run.Error)
			if phase == PreFreeze {
				break
			}
		}
	}
	return runs, first
}

func (r Runner) one(ctx context.Context, phase string, h contracts.Hook, guest Guest) contracts.HookRun {
	run := contracts.HookRun{Phase: phase, Command: h.Command, Host: h.Host, Exit: -1}
	start := time.Now()
	defer func() { run.Millis = time.Since(start).Milliseconds() }()
	if err := h.Validate(); err != nil {
		run.Error = err.Error()
		return run
	}
	argv, err := shlex.Split(h.Command)
	if err != nil || len(argv) == 0 {
		run.Error = fmt.Sprintf("cannot split the command into words: %v", err)
		return run
	}
	timeout := time.Duration(h.TimeoutSec) * time.Second
	if timeout == 0 {
		timeout = contracts.DefaultHookTimeoutSec * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var out []byte
	if h.Host {
		run.Exit, out, err = r.host(ctx, argv)
	} else if guest == nil {
		err = errors.New("the guest has no agent that answers: a guest hook cannot run")
	} else {
		run.Exit, out, err = guest.Exec(ctx, argv)
	}
	run.Output = tail(out)
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		run.Exit, run.Error = -1, fmt.Sprintf("timed out after %v", timeout)
	case err != nil:
		run.Error = err.Error()
	case run.Exit != 0:
		run.Error = fmt.Sprintf("exit status %d", run.Exit)
	}
	return run
}

// host runs a program of the hooks directory, in its own process group
// (a timeout kills what it started too).
func (r Runner) host(ctx context.Context, argv []string) (int, []byte, error) {
	if r.Dir == "" {
		return -1, nil, errors.New("host hooks are off on this snapshotter (STRATA_HOOKS_DIR is not set)")
	}
	prog := filepath.Join(r.Dir, argv[0])
	if filepath.Dir(prog) != filepath.Clean(r.Dir) {
		return -1, nil, fmt.Errorf("%q is not a program of the hooks directory", argv[0])
	}
	if st, err := os.Stat(prog); err != nil {
		return -1, nil, fmt.Errorf("hooks directory: %w", err)
	} else if !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return -1, nil, fmt.Errorf("%s is not an executable file", prog)
	}
	cmd := exec.CommandContext(ctx, prog, argv[1:]...)
	cmd.Dir = r.Dir
	cmd.Env = append(os.Environ(), r.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	out := &tailWriter{}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.Exited() {
		return exit.ExitCode(), out.Bytes(), nil
	}
	if err != nil {
		return -1, out.Bytes(), err
	}
	return 0, out.Bytes(), nil
}

// tailWriter keeps the last HookOutputMax bytes written to it: a hook that
// prints without end costs no memory.
type tailWriter struct{ b []byte }

func (w *tailWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	if len(w.b) > 2*contracts.HookOutputMax {
		w.b = append(w.b[:0], w.b[len(w.b)-contracts.HookOutputMax:]...)
	}
	return len(p), nil
}

func (w *tailWriter) Bytes() []byte { return w.b }

func tail(b []byte) string {
	if len(b) > contracts.HookOutputMax {
		b = b[len(b)-contracts.HookOutputMax:]
	}
	return string(bytes.ToValidUTF8(b, []byte("?")))
}
