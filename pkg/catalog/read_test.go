package catalog

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Reads ride out a leader election (timeouts, no responders) but take a
// definite answer at once.
func TestReadRetriesOnlyTransientErrors(t *testing.T) {
	tests := []struct {
		name      string
		failures  []error
		wantCalls int
		wantErr   error
	}{
		{"answer", nil, 1, nil},
		{"not found is an answer", []error{jetstream.ErrKeyNotFound}, 1, jetstream.ErrKeyNotFound},
		{"timeouts then answer", []error{context.DeadlineExceeded, nats.ErrTimeout, nats.ErrNoResponders}, 4, nil},
		{"gives up", []error{nats.ErrTimeout, nats.ErrTimeout, nats.ErrTimeout, nats.ErrTimeout, nats.ErrTimeout, nats.ErrTimeout, nats.ErrTimeout, nats.ErrTimeout, nats.ErrTimeout}, readRetries, nats.ErrTimeout},
	}
	for _, tt := range tests {
		calls := 0
		_, err := read(context.Background(), true, func(context.Context) (int, error) {
			calls++
			if calls <= len(tt.failures) {
				return 0, tt.failures[calls-1]
			}
			return 1, nil
		})
		if calls != tt.wantCalls || !errors.Is(err, tt.wantErr) && (err != nil || tt.wantErr != nil) {
			t.Errorf("%s: %d calls, err %v; want %d calls, err %v", tt.name, calls, err, tt.wantCalls, tt.wantErr)
		}
	}
}
