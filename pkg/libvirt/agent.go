package libvirt

import (
	"context"
	"fmt"

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
