package contracts

import "testing"

// Every pair of states: exactly the moves of the lifecycle are allowed.
func TestMovesAllowExactlyTheLifecycle(t *testing.T) {
	states := []State{StateNone, StateTransferring, StateCommitted, StateVerified, StateFailed, StateSkipped}
	allowed := map[[2]State]bool{
		{StateNone, StateTransferring}:      true,
		{StateNone, StateSkipped}:           true,
		{StateNone, StateFailed}:            true,
		{StateTransferring, StateCommitted}: true,
		{StateTransferring, StateFailed}:    true,
		{StateCommitted, StateVerified}:     true,
		{StateCommitted, StateFailed}:       true,
	}
	for _, from := range states {
		for _, to := range states {
			want := from == to || allowed[[2]State{from, to}]
			if got := CanMove(from, to); got != want {
				t.Errorf("CanMove(%q, %q) = %v, want %v", from, to, got, want)
			}
		}
		if from.Final() && len(Moves[from]) > 0 {
			t.Errorf("final state %s has moves %v", from, Moves[from])
		}
	}
	for _, to := range states {
		if to != StateNone && CanMove(to, StateNone) {
			t.Errorf("a record may move back to no state from %s", to)
		}
	}
}
