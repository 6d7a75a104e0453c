package contracts

import "testing"

// Hooks are checked where they enter: a host hook names a program of the
// hooks directory, never a path; sizes and time limits are bounded.
func TestHookValidation(t *testing.T) {
	ok := []Hook{{Command: "sh -c 'sync'"}, {Command: "/usr/local/bin/flush-db --all"}, {Command: "flush-db --all", Host: true, TimeoutSec: 600}}
	for _, h := range ok {
		if err := (Consistency{PreFreeze: []Hook{h}}).ValidateConsistency(); err != nil {
			t.Errorf("%+v refused: %v", h, err)
		}
	}
	bad := []Hook{{Command: " "}, {Command: "/bin/sh -c x", Host: true}, {Command: "../x", Host: true}, {Command: "..", Host: true},
		{Command: `a\b`, Host: true}, {Command: "x", TimeoutSec: -1}, {Command: "x", TimeoutSec: 7200}, {Command: "a\x00b"}}
	for _, h := range bad {
		if err := (Consistency{PostThaw: []Hook{h}}).ValidateConsistency(); err == nil {
			t.Errorf("%+v accepted", h)
		}
	}
}
