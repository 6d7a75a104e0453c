package api

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
)

// Run is one finished backup in the fleet's recent history.
type Run struct {
	VM       string    `json:"vm"`
	BackupID string    `json:"backup_id"`
	State    string    `json:"state"` // verified or failed
	Reason   string    `json:"reason,omitempty"`
	At       time.Time `json:"at"`
}

// runReader reads recent outcomes from the backups stream: the cost is
// the outcomes since the start time (a day of the fleet's backups), never
// the catalog.
type runReader struct{ js jetstream.JetStream }

// maxRunsRead bounds one page's read of the stream.
const maxRunsRead = 50000

// Recent returns the newest limit outcomes since since, newest first.
func (r *runReader) Recent(ctx context.Context, since time.Time, limit int) ([]Run, error) {
	return r.read(ctx, since, limit, contracts.SubjectBackupVerified, contracts.SubjectBackupFailed)
}

// Started returns the backups requested since since (as runs without an
// outcome), newest first: with Recent, what is running now, at the cost of
// a window of the stream.
func (r *runReader) Started(ctx context.Context, since time.Time, limit int) ([]Run, error) {
	return r.read(ctx, since, limit, contracts.SubjectBackupRequested)
}

func (r *runReader) read(ctx context.Context, since time.Time, limit int, subjects ...string) ([]Run, error) {
	c, err := r.js.OrderedConsumer(ctx, contracts.StreamBackups, jetstream.OrderedConsumerConfig{
		FilterSubjects: subjects,
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy, OptStartTime: &since,
	})
	if err != nil {
		return nil, fmt.Errorf("recent runs: %w", err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("recent runs: %w", err)
	}
	pending := int(min(info.NumPending, maxRunsRead))
	ring := make([]Run, 0, limit)
	for read := 0; read < pending; {
		batch, err := c.Fetch(min(500, pending-read), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("recent runs: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var run Run
			if m.Subject() == contracts.SubjectBackupRequested {
				var q contracts.BackupRequested
				if contracts.Decode(m.Data(), &q) != nil {
					continue
				}
				run = Run{VM: q.VM, BackupID: q.BackupID, State: "requested"}
			} else {
				var o contracts.BackupOutcome
				if contracts.Decode(m.Data(), &o) != nil {
					continue
				}
				run = Run{VM: o.VM, BackupID: o.BackupID, State: string(o.State), Reason: o.Reason}
			}
			md, _ := m.Metadata()
			if md != nil {
				run.At = md.Timestamp
			}
			if len(ring) == limit {
				ring = append(ring[1:], run)
			} else {
				ring = append(ring, run)
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("recent runs: %w", err)
		}
		if n == 0 {
			break
		}
		read += n
	}
	for i, j := 0, len(ring)-1; i < j; i, j = i+1, j-1 {
		ring[i], ring[j] = ring[j], ring[i]
	}
	return ring, nil
}
