package transfer

import "testing"

// Conditional PUTs stay the first choice until a backup has seen at least
// minRefusals refusals and more refusals than creations; backups are
// counted apart.
func TestPutOutcomesFallBackWhenMostlyRefused(t *testing.T) {
	tests := []struct {
		name             string
		created, refused int
		want             bool
	}{
		{"nothing yet", 0, 0, true},
		{"all created", 500, 0, true},
		{"few refusals", 0, minRefusals - 1, true},
		{"as many refused as created", 40, 40, true},
		{"mostly refused", 10, minRefusals + 1, false},
		{"all refused", 0, 100, false},
	}
	for _, tc := range tests {
		var p putOutcomes
		p.add("b1", tc.created, tc.refused)
		p.add("b2", 3, 0)
		if got := p.worthIt("b1"); got != tc.want {
			t.Errorf("%s: worthIt = %v, want %v", tc.name, got, tc.want)
		}
		if !p.worthIt("b2") || !p.worthIt("unseen") {
			t.Errorf("%s: another backup's refusals changed this one's choice", tc.name)
		}
	}
}
