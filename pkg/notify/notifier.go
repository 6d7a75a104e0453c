package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
)

// Notifier turns each backup outcome into the reports its targets want.
type Notifier struct {
	Records interface {
		Get(ctx context.Context, vm, id string) (*contracts.BackupRecord, uint64, error)
	}
	Targets interface {
		List(ctx context.Context) ([]contracts.NotifyTarget, []string, error)
	}
	Sent  jetstream.KeyValue // contracts.BucketNotifySent
	Send  func(ctx context.Context, t *contracts.NotifyTarget, r *Report) error
	Links Links
	Log   *slog.Logger
}

// Handle sends one outcome's reports: each target that wants it and has
// not had it. An error (a target that failed) has the outcome delivered
// again later; the targets done are not sent it twice.
func (n *Notifier) Handle(ctx context.Context, o *contracts.BackupOutcome) error {
	rec, _, err := n.Records.Get(ctx, o.VM, o.BackupID)
	if errors.Is(err, catalog.ErrNotFound) {
		return bus.Permanent(fmt.Errorf("outcome of an unknown backup: %w", err))
	}
	if err != nil {
		return err
	}
	if !rec.State.Final() {
		return bus.Permanent(fmt.Errorf("outcome of backup %s, which is %s", rec.ID, rec.State))
	}
	targets, bad, err := n.Targets.List(ctx)
	if err != nil {
		return err
	}
	for _, b := range bad {
		n.Log.WarnContext(ctx, "notification target unreadable; skipped", "target", b)
	}
	sev, _ := Severity(rec)
	var failed []error
	for i := range targets {
		t := &targets[i]
		if !t.Wants(sev, rec.VM) {
			continue
		}
		key := contracts.NotifySentKey(t.Name, rec.ID)
		if _, err := n.Sent.Get(ctx, key); err == nil {
			continue // sent before this delivery
		} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return err
		}
		rep := NewReport(rec, t.Name, n.Links)
		if err := n.Send(ctx, t, rep); err != nil {
			n.Log.WarnContext(ctx, "report not delivered", "target", t.Name, "vm", rec.VM, "backup", rec.ID, "err", err)
			failed = append(failed, err)
			continue
		}
		if _, err := n.Sent.Put(ctx, key, []byte("sent")); err != nil {
			return fmt.Errorf("mark report %s sent: %w", key, err)
		}
		n.Log.InfoContext(ctx, "report delivered", "target", t.Name, "kind", t.Kind, "vm", rec.VM, "backup", rec.ID, "severity", sev)
	}
	return errors.Join(failed...)
}
