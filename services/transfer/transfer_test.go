package transfer

import (
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
)

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

// auto compresses a VM's first full (PutFirst) with S2 and later backups
// with zstd; a named codec applies to every segment.
func TestCodecFor(t *testing.T) {
	first, later := &contracts.Segment{PutFirst: true}, &contracts.Segment{Inherit: true}
	tests := []struct {
		setting     string
		first, next chunk.Codec
	}{
		{"auto", chunk.S2, chunk.Zstd},
		{"zstd", chunk.Zstd, chunk.Zstd},
		{"s2", chunk.S2, chunk.S2},
		{"none", chunk.Raw, chunk.Raw},
	}
	for _, tc := range tests {
		cfg := Config{Compression: tc.setting}
		if got := cfg.codecFor(first); got != tc.first {
			t.Errorf("%s, first full: %s, want %s", tc.setting, got, tc.first)
		}
		if got := cfg.codecFor(later); got != tc.next {
			t.Errorf("%s, later backup: %s, want %s", tc.setting, got, tc.next)
		}
	}
}
