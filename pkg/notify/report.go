package notify

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/strata-backup/strata/contracts"
)

// Report is what a target is told about one backup: what XSIBackup's
// report says and more.
type Report struct {
	Schema     int      `json:"schema"`
	Event      string   `json:"event"`    // backup.verified or backup.failed
	Severity   string   `json:"severity"` // success, warning or failure
	Delivery   string   `json:"delivery"` // stable: the same for a resent report
	VM         string   `json:"vm"`
	BackupID   string   `json:"backup_id"`
	State      string   `json:"state"`
	Reason     string   `json:"reason,omitempty"`   // why it failed
	Warnings   []string `json:"warnings,omitempty"` // why it is a warning
	Kind       string   `json:"kind,omitempty"`
	FullReason string   `json:"full_reason,omitempty"`
	Parent     string   `json:"parent,omitempty"`
	ChainDepth int      `json:"chain_depth"`
	// Verification: the mode (stored, trivial, certify, chunks,
	// restore-test) and its result: passed, failed, or none when the
	// backup failed before it.
	Verification       string       `json:"verification,omitempty"`
	VerificationResult string       `json:"verification_result"`
	Consistency        string       `json:"consistency,omitempty"`
	Disks              []ReportDisk `json:"disks"`
	ReadBytes          int64        `json:"read_bytes"`
	StoredBytes        int64        `json:"stored_bytes"`
	StartedAt          time.Time    `json:"started_at"`
	FinishedAt         time.Time    `json:"finished_at"`
	DurationSeconds    float64      `json:"duration_seconds"`
	ConsoleURL         string       `json:"console_url,omitempty"`
	TraceURL           string       `json:"trace_url,omitempty"`
}

// ReportDisk is one disk of a reported backup.
type ReportDisk struct {
	Index       int    `json:"index"`
	Name        string `json:"name"`
	Size        int64  `json:"size"`
	ReadBytes   int64  `json:"read_bytes"`
	StoredBytes int64  `json:"stored_bytes"`
	Digest      string `json:"digest,omitempty"` // certify: the disk's SHA-256
}

// Severity of a finished backup: failure, warning (verified, but not as
// asked — a weaker consistency, a damaged chunk found since, a note from
// the source), or success.
func Severity(r *contracts.BackupRecord) (string, []string) {
	if r.State == contracts.StateFailed {
		return contracts.OnFailure, nil
	}
	var w []string
	// A weaker consistency than asked is worth a warning where a guest
	// could have been frozen (a hypervisor's VM), not for a disk image or
	// an NBD export, which never have one.
	if r.ConsistencyWhy != "" && (strings.HasPrefix(r.Source, "libvirt") || strings.HasPrefix(r.Source, "vsphere")) {
		w = append(w, "consistency "+r.Consistency+": "+r.ConsistencyWhy)
	}
	if r.Damaged {
		w = append(w, "damaged: it references a chunk found bad")
	}
	if r.Note != "" {
		w = append(w, r.Note)
	}
	if len(w) > 0 {
		return contracts.OnWarning, w
	}
	return contracts.OnSuccess, nil
}

// Links: where the console and the Jaeger UI are, for a report's links
// (empty: no link).
type Links struct{ Console, Jaeger string }

// NewReport describes a finished backup for one target.
func NewReport(r *contracts.BackupRecord, target string, links Links) *Report {
	sev, warnings := Severity(r)
	rep := &Report{Schema: contracts.SchemaVersion, Event: "backup." + string(r.State), Severity: sev, Warnings: warnings,
		Delivery: r.ID + "/" + target, VM: r.VM, BackupID: r.ID, State: string(r.State), Reason: r.Error,
		Kind: string(r.Kind), FullReason: r.FullReason, Parent: r.Parent, ChainDepth: r.ChainDepth,
		Verification: string(r.Verify), Consistency: r.Consistency, ReadBytes: r.ReadBytes(), StoredBytes: r.StoredBytes(),
		StartedAt: r.CreatedAt, FinishedAt: r.UpdatedAt, Disks: []ReportDisk{}}
	if r.FinishedAt != nil {
		rep.FinishedAt = *r.FinishedAt
	}
	rep.DurationSeconds = rep.FinishedAt.Sub(rep.StartedAt).Seconds()
	switch {
	case r.State == contracts.StateVerified:
		rep.VerificationResult = "passed"
	case strings.HasPrefix(r.Error, "verification"):
		rep.VerificationResult = "failed"
	default:
		rep.VerificationResult = "none"
	}
	for _, d := range r.Disks {
		rep.Disks = append(rep.Disks, ReportDisk{Index: d.Index, Name: d.Name, Size: d.Size, ReadBytes: d.ReadBytes, StoredBytes: d.UploadedBytes, Digest: d.Digest})
	}
	if links.Console != "" {
		rep.ConsoleURL = strings.TrimRight(links.Console, "/") + "/ui/vms/" + url.PathEscape(r.VM) + "/backups/" + url.PathEscape(r.ID)
	}
	if links.Jaeger != "" && r.TraceID != "" {
		rep.TraceURL = strings.TrimRight(links.Jaeger, "/") + "/trace/" + r.TraceID
	}
	return rep
}

// Subject is the e-mail's subject line.
func (r *Report) Subject() string {
	switch r.Severity {
	case contracts.OnFailure:
		return fmt.Sprintf("[Strata] FAILED: backup of %s — %s", r.VM, firstLine(r.Reason, 120))
	case contracts.OnWarning:
		return fmt.Sprintf("[Strata] WARNING: backup of %s verified (%s)", r.VM, firstLine(strings.Join(r.Warnings, "; "), 100))
	}
	return fmt.Sprintf("[Strata] OK: backup of %s verified (%s, %s read, %s stored)", r.VM, r.Kind, human(r.ReadBytes), human(r.StoredBytes))
}

// Text is the e-mail's body.
func (r *Report) Text() string {
	var b strings.Builder
	line := func(k, f string, a ...any) { fmt.Fprintf(&b, "%-14s %s\n", k+":", fmt.Sprintf(f, a...)) }
	fmt.Fprintf(&b, "Strata backup report — %s: %s (%s)\n\n", r.VM, strings.ToUpper(r.State), r.Severity)
	line("VM", "%s", r.VM)
	line("Backup", "%s", r.BackupID)
	line("Outcome", "%s", r.State)
	if r.Reason != "" {
		line("Reason", "%s", r.Reason)
	}
	for _, w := range r.Warnings {
		line("Warning", "%s", w)
	}
	kind := r.Kind
	if r.Parent != "" {
		kind += " of " + r.Parent
	}
	if r.FullReason != "" {
		kind += " (" + r.FullReason + ")"
	}
	if kind != "" {
		line("Kind", "%s, chain depth %d", kind, r.ChainDepth)
	}
	line("Started", "%s", r.StartedAt.UTC().Format(time.RFC3339))
	line("Finished", "%s (took %s)", r.FinishedAt.UTC().Format(time.RFC3339), (time.Duration(r.DurationSeconds * float64(time.Second))).Round(time.Millisecond))
	line("Read", "%s", human(r.ReadBytes))
	line("Stored", "%s", human(r.StoredBytes))
	if r.Verification != "" || r.VerificationResult != "none" {
		line("Verification", "%s — %s", orDash(r.Verification), r.VerificationResult)
	}
	if r.Consistency != "" {
		line("Consistency", "%s", r.Consistency)
	}
	if len(r.Disks) > 0 {
		b.WriteString("Disks:\n")
		for _, d := range r.Disks {
			fmt.Fprintf(&b, "  %d %-12s %10s  read %-10s stored %-10s %s\n", d.Index, d.Name, human(d.Size), human(d.ReadBytes), human(d.StoredBytes), d.Digest)
		}
	}
	if r.ConsoleURL != "" {
		line("Console", "%s", r.ConsoleURL)
	}
	if r.TraceURL != "" {
		line("Trace", "%s", r.TraceURL)
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func firstLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

func human(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }
