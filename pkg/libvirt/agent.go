package libvirt

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// AgentChannel is the virtio-serial channel name of the QEMU guest agent.
const AgentChannel = "org.qemu.guest_agent.0"

// HasAgentChannel reports whether the domain's definition has the QEMU
// guest agent's channel (whether an agent listens on it is Ping's to say).
func HasAgentChannel(dom *libvirtxml.Domain) bool {
	if dom.Devices == nil {
		return false
	}
	for _, ch := range dom.Devices.Channels {
		if ch.Target != nil && ch.Target.VirtIO != nil && ch.Target.VirtIO.Name == AgentChannel {
			return true
		}
	}
	return false
}

// Agent is the domain's QEMU guest agent, through libvirt
// (virDomainFSFreeze / virDomainFSThaw, guest-ping). Every call gives up
// when its ctx ends, even while libvirt still waits for the agent: a hung
// agent must not hold the backup (consistency.Agent).
type Agent struct{ c *Conn }

// Agent returns the domain's agent, with libvirt's wait for its answers
// bounded by timeoutSec (a stopped agent otherwise blocks the call).
func (c *Conn) Agent(timeoutSec int32) *Agent {
	c.l.DomainAgentSetResponseTimeout(c.dom, timeoutSec, 0) // older libvirt: its own default
	return &Agent{c: c}
}

// call runs f, or returns when ctx ends first (f goes on in the
// background; go-libvirt multiplexes calls on the connection).
func call[T any](ctx context.Context, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := f()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

func (a *Agent) Ping(ctx context.Context) error {
	_, err := call(ctx, func() (golibvirt.OptString, error) {
		return a.c.l.QEMUDomainAgentCommand(a.c.dom, `{"execute":"guest-ping"}`, 3, 0)
	})
	if err != nil {
		return fmt.Errorf("guest-ping of %s: %w", a.c.t.Domain, err)
	}
	return nil
}

func (a *Agent) Freeze(ctx context.Context, mountpoints []string) (int, error) {
	n, err := call(ctx, func() (int32, error) { return a.c.l.DomainFsfreeze(a.c.dom, mountpoints, 0) })
	if err != nil {
		return 0, fmt.Errorf("freeze the filesystems of %s: %w", a.c.t.Domain, err)
	}
	return int(n), nil
}

func (a *Agent) Thaw(ctx context.Context) (int, error) {
	n, err := call(ctx, func() (int32, error) { return a.c.l.DomainFsthaw(a.c.dom, nil, 0) })
	if err != nil {
		return 0, fmt.Errorf("thaw the filesystems of %s: %w", a.c.t.Domain, err)
	}
	return int(n), nil
}

// Exec runs a program in the guest through the agent's guest-exec and
// polls guest-exec-status until it exits or ctx ends (the program then
// goes on in the guest: the agent cannot kill it). Its output is stdout
// then stderr, as the agent captured them.
func (a *Agent) Exec(ctx context.Context, argv []string) (int, []byte, error) {
	req, _ := json.Marshal(map[string]any{"execute": "guest-exec", "arguments": map[string]any{
		"path": argv[0], "arg": argv[1:], "capture-output": true}})
	out, err := call(ctx, func() (golibvirt.OptString, error) { return a.c.l.QEMUDomainAgentCommand(a.c.dom, string(req), 5, 0) })
	if err != nil {
		return -1, nil, fmt.Errorf("guest-exec in %s: %w", a.c.t.Domain, err)
	}
	var started struct {
		Return struct {
			PID int `json:"pid"`
		} `json:"return"`
	}
	if len(out) == 0 || json.Unmarshal([]byte(out[0]), &started) != nil {
		return -1, nil, fmt.Errorf("guest-exec in %s: unexpected answer %q", a.c.t.Domain, out)
	}
	status := fmt.Sprintf(`{"execute":"guest-exec-status","arguments":{"pid":%d}}`, started.Return.PID)
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		out, err := call(ctx, func() (golibvirt.OptString, error) { return a.c.l.QEMUDomainAgentCommand(a.c.dom, status, 5, 0) })
		if err != nil {
			return -1, nil, fmt.Errorf("guest-exec-status in %s: %w", a.c.t.Domain, err)
		}
		var st struct {
			Return struct {
				Exited   bool   `json:"exited"`
				ExitCode int    `json:"exitcode"`
				Signal   int    `json:"signal"`
				Out      []byte `json:"out-data"` // base64, as encoding/json decodes []byte
				Err      []byte `json:"err-data"`
			} `json:"return"`
		}
		if len(out) == 0 || json.Unmarshal([]byte(out[0]), &st) != nil {
			return -1, nil, fmt.Errorf("guest-exec-status in %s: unexpected answer %q", a.c.t.Domain, out)
		}
		if r := st.Return; r.Exited {
			output := append(r.Out, r.Err...)
			if r.Signal != 0 {
				return -1, output, fmt.Errorf("killed by signal %d", r.Signal)
			}
			return r.ExitCode, output, nil
		}
		select {
		case <-ctx.Done():
			return -1, nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}
