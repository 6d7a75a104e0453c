package contracts

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"
)

// Consistency is what a backup asks of the guest at the instant of its
// snapshot (pkg/consistency): "application" (a pre-freeze hook flushes the
// application, then as filesystem), "filesystem" (the guest's filesystems
// frozen through its agent; the default), or "crash". Required: a freeze
// that fails fails the backup; otherwise it falls back to crash and the
// record says why.
//
// PreFreeze hooks run right before the freeze (a failing one counts as a
// failed freeze), PostThaw hooks after the snapshot and the thaw.
type Consistency struct {
	Consistency         string   `json:"consistency,omitempty"`
	ConsistencyRequired bool     `json:"consistency_required,omitempty"`
	FreezeMountpoints   []string `json:"freeze_mountpoints,omitempty"`
	PreFreeze           []Hook   `json:"pre_freeze,omitempty"`
	PostThaw            []Hook   `json:"post_thaw,omitempty"`
}

// Hook is a command run around a backup's freeze: in the guest through
// its agent (guest-exec: Command is a program and its arguments, split
// like a shell would), or, Host, on the snapshotter's host: the first
// word then names a program in the snapshotter's STRATA_HOOKS_DIR (only
// what an administrator put there runs; no path is accepted).
type Hook struct {
	Command string `json:"command"`
	Host    bool   `json:"host,omitempty"`
	// TimeoutSec bounds the run (0: DefaultHookTimeoutSec); one that runs
	// longer fails.
	TimeoutSec int `json:"timeout_s,omitempty"`
}

// DefaultHookTimeoutSec is a hook's time limit when it names none.
const DefaultHookTimeoutSec = 60

// HookRun is what one hook did, kept in the backup record.
type HookRun struct {
	Phase   string `json:"phase"` // "pre-freeze" or "post-thaw"
	Command string `json:"command"`
	Host    bool   `json:"host,omitempty"`
	Exit    int    `json:"exit"` // -1: it did not run to its end
	// Output is the end of what it printed (stdout then stderr), at most
	// HookOutputMax bytes.
	Output string `json:"output,omitempty"`
	Millis int64  `json:"ms"`
	Error  string `json:"error,omitempty"` // why it failed, when it did
}

// HookOutputMax bounds HookRun.Output.
const HookOutputMax = 4096

// ValidateConsistency checks the mode and the hooks.
func (c Consistency) ValidateConsistency() error {
	switch c.Consistency {
	case "", "application", "filesystem", "crash":
	default:
		return fmt.Errorf("consistency %q: want application, filesystem or crash", c.Consistency)
	}
	for _, hs := range [][]Hook{c.PreFreeze, c.PostThaw} {
		for _, h := range hs {
			if err := h.Validate(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Validate checks a hook's shape (the snapshotter checks a host hook's
// program against its hooks directory).
func (h Hook) Validate() error {
	switch {
	case strings.TrimSpace(h.Command) == "":
		return fmt.Errorf("hook: %w", errEmpty)
	case len(h.Command) > 4096:
		return fmt.Errorf("hook %.40q…: longer than 4096 bytes", h.Command)
	case h.TimeoutSec < 0 || h.TimeoutSec > 3600:
		return fmt.Errorf("hook %q: timeout %d s outside 0..3600", h.Command, h.TimeoutSec)
	case strings.ContainsRune(h.Command, 0):
		return fmt.Errorf("hook %q: a NUL byte", h.Command)
	}
	if h.Host {
		prog := strings.Fields(h.Command)[0]
		if prog != path.Base(prog) || prog == "." || prog == ".." || strings.Contains(prog, "\\") {
			return fmt.Errorf("host hook %q: %q must name a program in the hooks directory, not a path", h.Command, prog)
		}
	}
	return nil
}

// BackupTrigger asks for a backup of one VM now (CLI, HTTP, event).
type BackupTrigger struct {
	Consistency
	Schema int    `json:"schema"`
	VM     string `json:"vm"`
	Source string `json:"source"` // URL: file:///abs/path.img
	// Verify is the verification mode run on commit; empty: the
	// verifier's default (STRATA_VERIFY_MODE).
	Verify VerifyMode `json:"verify,omitempty"`
	// SkipFree: a full read skips the blocks the guest's filesystems
	// mark free (they are stored as zeros).
	SkipFree bool `json:"skip_free,omitempty"`
}

func (m *BackupTrigger) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if err := m.ValidateConsistency(); err != nil {
		return err
	}
	if err := need("vm", m.VM); err != nil {
		return err
	}
	if err := m.Verify.Validate(true); err != nil {
		return err
	}
	return ValidateSource(m.Source)
}

// BackupAccepted is the scheduler's reply to a BackupTrigger request.
type BackupAccepted struct {
	Schema   int    `json:"schema"`
	BackupID string `json:"backup_id"`
	TraceID  string `json:"trace_id,omitempty"`
}

func (m *BackupAccepted) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if !ValidToken(m.BackupID) {
		return fmt.Errorf("backup_id %q is not a valid id", m.BackupID)
	}
	return nil
}

// BackupRequested starts one VM backup at the snapshotter.
type BackupRequested struct {
	Consistency
	Schema      int        `json:"schema"`
	BackupID    string     `json:"backup_id"`
	VM          string     `json:"vm"`
	Source      string     `json:"source"`
	RequestedAt time.Time  `json:"requested_at"`
	Slot        *time.Time `json:"slot,omitempty"`         // the schedule slot that fired it
	KeyInterval int        `json:"key_interval,omitempty"` // the policy's; 0: the snapshotter's default
	Verify      VerifyMode `json:"verify,omitempty"`       // empty: the verifier's default
	SkipFree    bool       `json:"skip_free,omitempty"`    // full reads skip blocks the guest's filesystems mark free
}

func (m *BackupRequested) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if err := m.ValidateConsistency(); err != nil {
		return err
	}
	if !ValidToken(m.BackupID) {
		return fmt.Errorf("backup_id %q is not a valid id", m.BackupID)
	}
	if err := need("vm", m.VM); err != nil {
		return err
	}
	if m.RequestedAt.IsZero() {
		return fmt.Errorf("requested_at: %w", errEmpty)
	}
	if err := m.Verify.Validate(true); err != nil {
		return err
	}
	return ValidateSource(m.Source)
}

// Segment is one unit of transfer work: chunks [FirstChunk, FirstChunk+Chunks)
// of one disk, i.e. bytes [FirstChunk*ChunkSize, min(end, Size)).
type Segment struct {
	Schema     int    `json:"schema"`
	BackupID   string `json:"backup_id"`
	VM         string `json:"vm"`
	Disk       int    `json:"disk"`
	Index      int    `json:"index"`
	Source     string `json:"source"`
	DiskSize   int64  `json:"disk_size"`
	ChunkSize  int    `json:"chunk_size"`
	FirstChunk int64  `json:"first_chunk"`
	Chunks     int    `json:"chunks"`
	// Sparse: read only the chunk runs in Runs (relative to FirstChunk);
	// every other chunk of the segment is unallocated and reads as zeros.
	// Lets a full backup skip what the source says holds no data.
	Sparse bool       `json:"sparse,omitempty"`
	Runs   []ChunkRun `json:"runs,omitempty"`
	// Inherit (with Sparse): chunks outside Runs did not change since the
	// parent backup; the result marks them InheritID and merge takes the
	// parent's ids.
	Inherit bool `json:"inherit,omitempty"`
	// PutFirst: most chunks read will be new to the repository (a VM's
	// first full): store them with conditional PUTs and ask dedup only
	// about those the store refuses, as an incremental (Inherit) does.
	PutFirst bool `json:"put_first,omitempty"`
	// Parent: the manifest of this disk in the VM's newest verified,
	// undamaged backup, for a full read of a disk of the same size. A
	// chunk whose id equals the parent's at the same position is stored
	// already: it is neither asked about nor uploaded, so re-reading a disk
	// without change tracking costs requests only for what changed.
	Parent string `json:"parent,omitempty"`
}

// InheritID in SegmentDone.IDs: "same chunk as in the parent backup".
const InheritID = "="

// ChunkRun is Count chunks from Start.
type ChunkRun struct {
	Start int `json:"start"`
	Count int `json:"count"`
}

func (m *Segment) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if !ValidToken(m.BackupID) {
		return fmt.Errorf("backup_id %q is not a valid id", m.BackupID)
	}
	if err := need("vm", m.VM); err != nil {
		return err
	}
	if m.Disk < 0 || m.Index < 0 || m.FirstChunk < 0 {
		return fmt.Errorf("negative disk, index or first_chunk")
	}
	if err := ValidChunkSize(m.ChunkSize); err != nil {
		return err
	}
	if m.Chunks <= 0 || int64(m.Chunks)*int64(m.ChunkSize) > MaxSegmentBytes {
		return fmt.Errorf("segment of %d chunks of %d bytes: must be 1..%d bytes", m.Chunks, m.ChunkSize, MaxSegmentBytes)
	}
	if m.DiskSize <= 0 || m.FirstChunk*int64(m.ChunkSize) >= m.DiskSize {
		return fmt.Errorf("segment starts at chunk %d beyond disk size %d", m.FirstChunk, m.DiskSize)
	}
	if !m.Sparse && (len(m.Runs) > 0 || m.Inherit) {
		return fmt.Errorf("runs or inherit given for a non-sparse segment")
	}
	next := 0
	for _, r := range m.Runs {
		if r.Start < next || r.Count <= 0 || r.Start+r.Count > m.Chunks {
			return fmt.Errorf("chunk runs must be ordered, disjoint and inside the segment")
		}
		next = r.Start + r.Count
	}
	if m.Parent != "" && (!strings.HasPrefix(m.Parent, "manifests/") || strings.Contains(m.Parent, "..")) {
		return fmt.Errorf("parent %q is not a manifest key", m.Parent)
	}
	return ValidateSource(m.Source)
}

// Subject is where this segment is published.
func (m *Segment) Subject() string {
	return fmt.Sprintf("%s%s.%d.%d", SubjectSegmentPrefix, m.BackupID, m.Disk, m.Index)
}

// SegmentDone reports the chunk ids of one segment, in chunk order. An empty
// string stands for an all-zero chunk, which is never stored; InheritID for
// a chunk unchanged since the parent backup (not read).
type SegmentDone struct {
	Schema         int      `json:"schema"`
	BackupID       string   `json:"backup_id"`
	VM             string   `json:"vm"`
	Disk           int      `json:"disk"`
	Index          int      `json:"index"`
	FirstChunk     int64    `json:"first_chunk"`
	IDs            []string `json:"ids"`
	ReadBytes      int64    `json:"read_bytes"`
	UploadedChunks int      `json:"uploaded_chunks"`
	UploadedBytes  int64    `json:"uploaded_bytes"` // as stored: compressed
	// Stored: the chunks (relative to FirstChunk) this segment wrote with
	// a PUT the store acknowledged. The verifier does not ask the store
	// again about those (a hint: a chunk left out is only checked).
	Stored []ChunkRun `json:"stored,omitempty"`
	// Where chunks of a packed repository are stored: Locs[i] places
	// chunk Locs[i].At (relative to FirstChunk) in pack Packs[Locs[i].Pack].
	// A chunk read and not listed is stored on its own.
	Packs []string   `json:"packs,omitempty"`
	Locs  []ChunkLoc `json:"locs,omitempty"`
	// Failed: the segment could not be read or stored after every
	// redelivery (no ids then); merge fails the backup with this reason.
	// Workers report failures rather than write the catalog themselves:
	// their credential has no right to it (natsauth).
	Failed string `json:"failed,omitempty"`
}

// ChunkLoc places one chunk in a pack: bytes [Off, Off+Len) of pack
// number Pack of the message's Packs.
type ChunkLoc struct {
	At   int    `json:"at,omitempty"` // chunk index, where the message needs one
	ID   string `json:"id,omitempty"` // chunk id, where the message needs one
	Pack int    `json:"pack"`
	Off  uint32 `json:"off"`
	Len  uint32 `json:"len"`
}

// validLocs checks locations against a pack table (and, with n > 0, chunk
// indexes below n).
func validLocs(packs []string, locs []ChunkLoc, n int) error {
	for i, p := range packs {
		if len(p) != 32 || !isHex(p) {
			return fmt.Errorf("packs[%d]: %q is not a pack id", i, p)
		}
	}
	for i, l := range locs {
		if l.Pack < 0 || l.Pack >= len(packs) || l.Len == 0 || n > 0 && (l.At < 0 || l.At >= n) {
			return fmt.Errorf("locs[%d]: pack %d of %d, %d bytes, chunk %d", i, l.Pack, len(packs), l.Len, l.At)
		}
		if l.ID != "" {
			if err := ValidChunkID(l.ID); err != nil {
				return fmt.Errorf("locs[%d]: %w", i, err)
			}
		}
	}
	return nil
}

func isHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func (m *SegmentDone) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if !ValidToken(m.BackupID) {
		return fmt.Errorf("backup_id %q is not a valid id", m.BackupID)
	}
	if err := need("vm", m.VM); err != nil {
		return err
	}
	if m.Disk < 0 || m.Index < 0 || m.FirstChunk < 0 {
		return fmt.Errorf("negative disk, index or first_chunk")
	}
	if m.Failed != "" {
		if len(m.IDs) != 0 || len(m.Failed) > 4096 {
			return fmt.Errorf("a failed segment with ids, or a reason of %d bytes", len(m.Failed))
		}
		return nil
	}
	if len(m.IDs) == 0 {
		return fmt.Errorf("ids: %w", errEmpty)
	}
	for i, id := range m.IDs {
		if id != "" && id != InheritID {
			if err := ValidChunkID(id); err != nil {
				return fmt.Errorf("ids[%d]: %w", i, err)
			}
		}
	}
	for _, r := range m.Stored {
		if r.Start < 0 || r.Count <= 0 || r.Start+r.Count > len(m.IDs) {
			return fmt.Errorf("stored run %d+%d outside the segment's %d chunks", r.Start, r.Count, len(m.IDs))
		}
	}
	return validLocs(m.Packs, m.Locs, len(m.IDs))
}

// SegmentDoneSubject is where the result of one segment is published.
func SegmentDoneSubject(backupID string, disk, index int) string {
	return fmt.Sprintf("%s%s.%d.%d", SubjectSegmentDonePrefix, backupID, disk, index)
}

// BackupCommitted: manifests and record are written; verify next.
type BackupCommitted struct {
	Schema   int    `json:"schema"`
	BackupID string `json:"backup_id"`
	VM       string `json:"vm"`
	// Stored, per disk index, the chunks (absolute positions) the backup's
	// workers wrote with an acknowledged PUT: verification at the stored
	// level does not ask the store about them again. Left out (nil) when
	// the runs would make the message large; then every chunk is checked.
	Stored [][]ChunkRun `json:"stored,omitempty"`
}

func (m *BackupCommitted) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if !ValidToken(m.BackupID) {
		return fmt.Errorf("backup_id %q is not a valid id", m.BackupID)
	}
	return need("vm", m.VM)
}

// BackupOutcome ends a backup: verified or failed.
type BackupOutcome struct {
	Schema   int    `json:"schema"`
	BackupID string `json:"backup_id"`
	VM       string `json:"vm"`
	State    State  `json:"state"`
	Reason   string `json:"reason,omitempty"`
}

func (m *BackupOutcome) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if !ValidToken(m.BackupID) {
		return fmt.Errorf("backup_id %q is not a valid id", m.BackupID)
	}
	if err := need("vm", m.VM); err != nil {
		return err
	}
	if m.State != StateVerified && m.State != StateFailed {
		return fmt.Errorf("state %q: want verified or failed", m.State)
	}
	if m.State == StateFailed && m.Reason == "" {
		return fmt.Errorf("failed outcome needs a reason")
	}
	return nil
}

// MissingRequest asks dedup which of these chunk ids the repository lacks.
type MissingRequest struct {
	Schema int      `json:"schema"`
	IDs    []string `json:"ids"`
}

// MaxMissingBatch bounds one request (and keeps it under NATS's 1 MB payload).
const MaxMissingBatch = 4096

func (m *MissingRequest) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	return validChunkIDs(m.IDs)
}

// validChunkIDs accepts 1..MaxMissingBatch well-formed chunk ids.
func validChunkIDs(ids []string) error {
	if len(ids) == 0 || len(ids) > MaxMissingBatch {
		return fmt.Errorf("ids: %d, want 1..%d", len(ids), MaxMissingBatch)
	}
	for i, id := range ids {
		if err := ValidChunkID(id); err != nil {
			return fmt.Errorf("ids[%d]: %w", i, err)
		}
	}
	return nil
}

// MissingReply lists the subset of the requested ids that must be uploaded;
// in a packed repository, Located says where the others are (by ID, in
// pack Packs[Pack]); a present chunk not located is stored on its own.
type MissingReply struct {
	Schema  int        `json:"schema"`
	Missing []string   `json:"missing"`
	Packs   []string   `json:"packs,omitempty"`
	Located []ChunkLoc `json:"located,omitempty"`
	// Loose: of Missing, the chunks to store on their own even in a packed
	// repository — repairs of chunks found bad, which backups pointing at
	// the damaged pack range then read instead (repo.ReadChunk).
	Loose []string `json:"loose,omitempty"`
}

func (m *MissingReply) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	return validLocs(m.Packs, m.Located, 0)
}

// PackStored announces a pack a transfer worker stored, with what it holds
// (as its trailer says), so every dedup instance indexes it without
// reading it back. Published on PackStoredSubject.
type PackStored struct {
	Schema int        `json:"schema"`
	Pack   string     `json:"pack"`
	Chunks []ChunkLoc `json:"chunks"` // ID, Off, Len (Pack 0: this one)
}

func (m *PackStored) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if len(m.Chunks) == 0 {
		return fmt.Errorf("chunks: %w", errEmpty)
	}
	for i, c := range m.Chunks {
		if c.ID == "" {
			return fmt.Errorf("chunks[%d]: no id", i)
		}
	}
	return validLocs([]string{m.Pack}, m.Chunks, 0)
}

// PackRetained announces retain-until dates of packs (Object Lock): set
// by merge when a backup's commit extended them, or read by it from S3.
// Published on SubjectPackRetained, at most MaxPackDates a message.
type PackRetained struct {
	Schema int        `json:"schema"`
	Packs  []PackDate `json:"packs"`
}

// PackDate is one pack's retain-until date.
type PackDate struct {
	Pack  string    `json:"pack"`
	Until time.Time `json:"until"`
}

// MaxPackDates bounds a PackRetained message (~80 bytes a pack, well
// under NATS's 1 MB payload).
const MaxPackDates = 8192

func (m *PackRetained) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if len(m.Packs) == 0 || len(m.Packs) > MaxPackDates {
		return fmt.Errorf("%d pack dates: want 1 to %d", len(m.Packs), MaxPackDates)
	}
	for i, d := range m.Packs {
		if len(d.Pack) != 32 || d.Until.IsZero() {
			return fmt.Errorf("packs[%d]: %q until %v", i, d.Pack, d.Until)
		}
	}
	return nil
}

// PackStoredSubject is where a stored pack is announced.
func PackStoredSubject(pack string) string { return SubjectPackStoredPrefix + pack }

// ValidChunkID checks a hex-encoded 32-byte chunk id.
func ValidChunkID(id string) error {
	if len(id) != 64 {
		return fmt.Errorf("chunk id %q: want 64 hex digits", id)
	}
	if _, err := hex.DecodeString(id); err != nil {
		return fmt.Errorf("chunk id %q: %w", id, err)
	}
	return nil
}

// ValidChunkSize: a power of two between 64 KiB and 16 MiB.
func ValidChunkSize(n int) error {
	if n < 64<<10 || n > 16<<20 || n&(n-1) != 0 {
		return fmt.Errorf("chunk size %d: want a power of two from 64 KiB to 16 MiB", n)
	}
	return nil
}

// SourceSchemes are the URL schemes of the sources Strata reads (each has a
// driver in pkg/source).
var SourceSchemes = []string{"file", "nbd", "nbds", "vsphere", "libvirt+unix", "libvirt+ssh", "qemu+unix", "qemu+ssh"}

// ValidateSource accepts the source URLs Strata can read.
func ValidateSource(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("source %q: %w", s, err)
	}
	switch u.Scheme {
	case "file":
		if u.Path == "" || u.Path[0] != '/' {
			return fmt.Errorf("source %q: file source needs an absolute path (file:///abs/path.img)", s)
		}
		if u.Host != "" && u.Host != "localhost" {
			return fmt.Errorf("source %q: a file source names a local path, not host %q (file:///abs/path.img)", s, u.Host)
		}
		if path.Clean(u.Path) != u.Path || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("source %q: file source path must be clean (no .., //, trailing / or query): file://%s", s, path.Clean(u.Path))
		}
		return nil
	case "nbd", "nbds":
		if u.Host == "" || u.Port() == "" || len(u.Path) < 2 {
			return fmt.Errorf("source %q: nbd source needs host, port and export (%s://host:port/export[?bitmap=NAME])", s, u.Scheme)
		}
		return nil
	case "vsphere":
		if strings.Trim(u.Path, "/") == "" {
			return fmt.Errorf("source %q: vsphere source needs a VM name or inventory path (vsphere://vcenter/DC/vm/NAME or vsphere:///NAME)", s)
		}
		return nil
	case "libvirt+unix", "libvirt+ssh", "qemu+unix", "qemu+ssh":
		// The driver (pkg/libvirt) checks the rest: options, names.
		parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
		if len(parts) != 2 || (parts[0] != "system" && parts[0] != "session") || parts[1] == "" {
			return fmt.Errorf("source %q: libvirt source needs /system/DOMAIN or /session/DOMAIN (libvirt+unix:///system/web-01, libvirt+ssh://host/system/web-01)", s)
		}
		return nil
	case "":
		if strings.HasPrefix(s, "/") {
			return fmt.Errorf("source %q: a source is a URL; for a local image or block device write file://%s", s, s)
		}
		return fmt.Errorf("source %q: a source is a URL: file:///abs/path.img, nbd://host:port/export, vsphere://vcenter/VM or libvirt+unix:///system/DOMAIN", s)
	default:
		return fmt.Errorf("source %q: unsupported scheme %q (supported: %s)", s, u.Scheme, strings.Join(SourceSchemes, ", "))
	}
}

// CatalogKey is the KV key of one backup. VM names may hold any character,
// so they are base64url-encoded into one key token; keys of one VM share the
// prefix CatalogVMPrefix(vm) and sort by backup id (UUIDv7: by time).
func CatalogKey(vm, backupID string) string {
	return CatalogVMPrefix(vm) + backupID
}

// StatusKey is the catalog bucket's key of a VM's outcome summary
// (VMStatus).
func StatusKey(vm string) string {
	return StatusPrefix + base64.RawURLEncoding.EncodeToString([]byte(vm))
}

// StatusPrefix starts every VMStatus key.
const StatusPrefix = "s."

// VMStatus is one VM's latest outcomes, kept by the catalog beside its
// records: what a fleet view and the per-VM metrics read without listing
// every backup. Times only move forward.
type VMStatus struct {
	Schema         int        `json:"schema"`
	VM             string     `json:"vm"`
	LastVerified   string     `json:"last_verified,omitempty"` // backup id
	LastVerifiedAt *time.Time `json:"last_verified_at,omitempty"`
	LastFailed     string     `json:"last_failed,omitempty"`
	LastFailedAt   *time.Time `json:"last_failed_at,omitempty"`
	LastFailReason string     `json:"last_fail_reason,omitempty"`
}

// CatalogVMPrefix is the key prefix of every backup of vm.
func CatalogVMPrefix(vm string) string {
	return "b." + base64.RawURLEncoding.EncodeToString([]byte(vm)) + "."
}

// PolicyKey is the KV key of a VM's policy.
func PolicyKey(vm string) string {
	return "p." + base64.RawURLEncoding.EncodeToString([]byte(vm))
}

// Policy is a VM's backup policy (KV bucket BucketPolicies).
type Policy struct {
	Consistency
	Schema      int           `json:"schema"`
	VM          string        `json:"vm"`
	Source      string        `json:"source"`
	Schedule    string        `json:"schedule"` // cron, optional leading seconds field, or @every 1h
	Jitter      time.Duration `json:"jitter,omitempty"`
	KeyInterval int           `json:"key_interval,omitempty"`
	KeepLast    int           `json:"keep_last,omitempty"`
	KeepHourly  int           `json:"keep_hourly,omitempty"`
	KeepDaily   int           `json:"keep_daily,omitempty"`
	KeepWeekly  int           `json:"keep_weekly,omitempty"`
	KeepMonthly int           `json:"keep_monthly,omitempty"`
	KeepYearly  int           `json:"keep_yearly,omitempty"`
	Verify      VerifyMode    `json:"verify,omitempty"`
	SkipFree    bool          `json:"skip_free,omitempty"`
	// CopyTo: after each verified backup, the merge service copies the
	// VM's backups the target lacks to this repository (dir:///path or
	// s3://bucket/prefix?endpoint=…; credentials from the service's
	// STRATA_COPY_S3_*), then applies CopyKeep there: copies usually keep
	// more points than the primary.
	CopyTo   string `json:"copy_to,omitempty"`
	CopyKeep *Keep  `json:"copy_keep,omitempty"`
	// RPO: the most a VM's newest verified backup may age before it counts
	// as unprotected (the console's red, the StrataNoVerifiedBackupWithinRPO
	// alert); 0: twice the schedule's interval, plus its jitter
	// (schedule.RPO).
	RPO       time.Duration `json:"rpo,omitempty"`
	UpdatedAt time.Time     `json:"updated_at"`
}

// FreezeKey is the KV key of a VM's freeze in progress.
func FreezeKey(vm string) string {
	return "f." + base64.RawURLEncoding.EncodeToString([]byte(vm))
}

// Freeze is a guest frozen for a snapshot (KV bucket BucketFreezes): any
// snapshotter thaws it once ThawBy has passed and the record is still
// there (the one that froze it died).
type Freeze struct {
	Schema   int       `json:"schema"`
	VM       string    `json:"vm"`
	BackupID string    `json:"backup_id"`
	Source   string    `json:"source"`
	ThawBy   time.Time `json:"thaw_by"`
}

func (f *Freeze) Validate() error {
	if err := checkSchema(f.Schema); err != nil {
		return err
	}
	if err := need("vm", f.VM); err != nil {
		return err
	}
	return ValidateSource(f.Source)
}

// MirrorKey is the KV key of a VM's standby mirror.
func MirrorKey(vm string) string {
	return "m." + base64.RawURLEncoding.EncodeToString([]byte(vm))
}

// Mirror is a VM's standby mirror (XSIBackup's OneDiff): one of its disks
// kept, as a raw disk, at the point of its latest verified backup, ready
// to start (KV bucket BucketMirrors, owned by pkg/mirror).
type Mirror struct {
	Schema int    `json:"schema"`
	VM     string `json:"vm"`
	// Target: file:///abs/path.raw or nbd://host:port/export (writable).
	Target string `json:"target"`
	Disk   int    `json:"disk,omitempty"`
	// Certify: after each update hash the whole target against the
	// backup; otherwise the trivial check (size and the first MiB).
	Certify bool `json:"certify,omitempty"`
	// Point is the backup the target holds ("" before the first sync).
	Point string `json:"point,omitempty"`
	// Guard: chunks the target must hold as last written (the first MiB
	// and a sample of what the last update wrote): one that differs means
	// the target changed behind Strata's back, and it is refused until a
	// reseed.
	Guard []MirrorChunk `json:"guard,omitempty"`
	// The last update: bytes and chunks written, the check it passed.
	BytesWritten  int64      `json:"bytes_written"`
	ChunksWritten int64      `json:"chunks_written"`
	Check         string     `json:"check,omitempty"` // trivial, certified, reseeded
	SyncedAt      *time.Time `json:"synced_at,omitempty"`
	// Error: why the last update failed (the target stays at Point).
	Error       string    `json:"error,omitempty"`
	NeedsReseed bool      `json:"needs_reseed,omitempty"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// MirrorChunk is one chunk a mirror target holds.
type MirrorChunk struct {
	Index int64  `json:"i"`
	ID    string `json:"id"`
}

func (m *Mirror) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if err := need("vm", m.VM); err != nil {
		return err
	}
	if m.Disk < 0 {
		return fmt.Errorf("disk %d", m.Disk)
	}
	if !strings.HasPrefix(m.Target, "file:///") && !strings.HasPrefix(m.Target, "nbd://") {
		return fmt.Errorf("mirror target %q: want file:///path or nbd://host:port/export", m.Target)
	}
	return nil
}

// Keep is a set of retention rules (PBS semantics, see pkg/retention).
type Keep struct {
	Last    int `json:"last,omitempty"`
	Hourly  int `json:"hourly,omitempty"`
	Daily   int `json:"daily,omitempty"`
	Weekly  int `json:"weekly,omitempty"`
	Monthly int `json:"monthly,omitempty"`
	Yearly  int `json:"yearly,omitempty"`
}

func (p *Policy) Validate() error {
	if err := checkSchema(p.Schema); err != nil {
		return err
	}
	if err := p.Verify.Validate(true); err != nil {
		return err
	}
	if err := need("vm", p.VM); err != nil {
		return err
	}
	if err := need("schedule", p.Schedule); err != nil {
		return err
	}
	if p.Jitter < 0 || p.RPO < 0 || p.KeyInterval < 0 || p.KeepLast < 0 || p.KeepHourly < 0 || p.KeepDaily < 0 || p.KeepWeekly < 0 || p.KeepMonthly < 0 || p.KeepYearly < 0 {
		return fmt.Errorf("negative jitter, rpo, key interval or retention count")
	}
	if p.UpdatedAt.IsZero() {
		return fmt.Errorf("updated_at: %w", errEmpty)
	}
	if err := p.ValidateConsistency(); err != nil {
		return err
	}
	if k := p.CopyKeep; k != nil && (k.Last < 0 || k.Hourly < 0 || k.Daily < 0 || k.Weekly < 0 || k.Monthly < 0 || k.Yearly < 0) {
		return fmt.Errorf("negative copy retention count")
	}
	if p.CopyKeep != nil && p.CopyTo == "" {
		return fmt.Errorf("copy_keep without copy_to")
	}
	if p.CopyTo != "" && !strings.HasPrefix(p.CopyTo, "dir:///") && !strings.HasPrefix(p.CopyTo, "s3://") {
		return fmt.Errorf("copy_to %q: want dir:///path or s3://bucket/prefix", p.CopyTo)
	}
	return ValidateSource(p.Source)
}

// PruneRequest asks merge to apply retention to one VM's backups.
type PruneRequest struct {
	Schema      int    `json:"schema"`
	VM          string `json:"vm"`
	UsePolicy   bool   `json:"use_policy,omitempty"` // take the counts from the VM's policy
	KeepLast    int    `json:"keep_last,omitempty"`
	KeepHourly  int    `json:"keep_hourly,omitempty"`
	KeepDaily   int    `json:"keep_daily,omitempty"`
	KeepWeekly  int    `json:"keep_weekly,omitempty"`
	KeepMonthly int    `json:"keep_monthly,omitempty"`
	KeepYearly  int    `json:"keep_yearly,omitempty"`
	DryRun      bool   `json:"dry_run,omitempty"`
}

func (m *PruneRequest) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if err := need("vm", m.VM); err != nil {
		return err
	}
	if m.KeepLast < 0 || m.KeepHourly < 0 || m.KeepDaily < 0 || m.KeepWeekly < 0 || m.KeepMonthly < 0 || m.KeepYearly < 0 {
		return fmt.Errorf("negative retention count")
	}
	if !m.UsePolicy && !m.HasRules() {
		return fmt.Errorf("no retention rule given (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly or use_policy)")
	}
	return nil
}

// HasRules reports whether the request names any retention count.
func (m *PruneRequest) HasRules() bool {
	return m.KeepLast+m.KeepHourly+m.KeepDaily+m.KeepWeekly+m.KeepMonthly+m.KeepYearly > 0
}

// PruneReply lists what was (or, in a dry run, would be) pruned.
type PruneReply struct {
	Schema int      `json:"schema"`
	DryRun bool     `json:"dry_run"`
	Kept   []string `json:"kept"`
	Pruned []string `json:"pruned"`
	// Locked: backups the rules drop that are still under Object Lock;
	// kept, and pruned by a later run once their lock has passed.
	Locked []LockedBackup `json:"locked,omitempty"`
}

// CopyReply is what a copy to another repository did (strata copy
// --json, and the merge service's log after a policy's copy).
type CopyReply struct {
	From           string   `json:"from"`
	To             string   `json:"to"`
	Backups        int      `json:"backups"`         // backups selected
	Copied         []string `json:"copied"`          // backups copied by this run
	AlreadyThere   int      `json:"already_there"`   // backups the target had
	Objects        int64    `json:"objects"`         // objects written
	Bytes          int64    `json:"bytes"`           // their bytes
	ObjectsPresent int64    `json:"objects_present"` // objects the target had (not read)
	ChunksChecked  int64    `json:"chunks_checked"`  // chunks checked against their ids on the way
	LockExtended   int      `json:"lock_extended,omitempty"`
	// The copy's own retention, when it has rules.
	Pruned   []string       `json:"pruned,omitempty"`
	Locked   []LockedBackup `json:"locked,omitempty"`
	Seconds  float64        `json:"seconds"`
	MBPerSec float64        `json:"mb_per_sec"`
}

// LockedBackup is a backup that cannot be deleted before Until.
type LockedBackup struct {
	ID    string    `json:"id"`
	Until time.Time `json:"until"`
}

func (m *PruneReply) Validate() error { return checkSchema(m.Schema) }

// GCRequest asks dedup to collect garbage: delete chunk objects that no
// backup references and that are older than the grace period.
type GCRequest struct {
	Schema int    `json:"schema"`
	DryRun bool   `json:"dry_run,omitempty"`
	Grace  string `json:"grace,omitempty"` // Go duration; empty: the service's default
	// RepackBelow: packs whose live bytes are under this fraction of their
	// size are rewritten (compacted); nil: the service's
	// STRATA_GC_REPACK_BELOW; 0: none.
	RepackBelow *float64 `json:"repack_below,omitempty"`
	// Recompress rewrites packs holding S2 chunks, re-encoding them with
	// zstd.
	Recompress bool `json:"recompress,omitempty"`
	// RateLimit paces the bytes compaction reads, per second (0: unlimited).
	RateLimit int64 `json:"rate_limit,omitempty"`
}

func (m *GCRequest) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if m.Grace != "" {
		d, err := time.ParseDuration(m.Grace)
		if err != nil || d < 0 {
			return fmt.Errorf("grace %q: want a non-negative duration", m.Grace)
		}
	}
	if m.RepackBelow != nil && (*m.RepackBelow < 0 || *m.RepackBelow > 1 || *m.RepackBelow != *m.RepackBelow) {
		return fmt.Errorf("repack below %v: want a fraction from 0 to 1", *m.RepackBelow)
	}
	if m.RateLimit < 0 {
		return fmt.Errorf("rate limit %d: want bytes per second, 0 for none", m.RateLimit)
	}
	return nil
}

// GCHoldKey is the BucketGCHolds key of a chunk in one collection.
func GCHoldKey(gcID, chunkID string) string { return gcID + "." + chunkID }

// GCLock is the value of GCLockKey. Phase "mark": the collector is
// marking; "sweep": Condemned (an object key) lists the chunk ids it may
// delete, and dedup must hold any of them a backup reuses.
type GCLock struct {
	ID        string    `json:"id"`
	Since     time.Time `json:"since"`
	Phase     string    `json:"phase"`
	Condemned string    `json:"condemned,omitempty"`
	// CondemnedPacks (an object key) lists the 16-byte ids of packs the
	// collector may delete; dedup holds any of them it is about to locate
	// a chunk in (hold key "pack-<id>").
	CondemnedPacks string `json:"condemned_packs,omitempty"`
}

// GCReply reports a collection.
type GCReply struct {
	Schema       int       `json:"schema"`
	DryRun       bool      `json:"dry_run"`
	Finished     time.Time `json:"finished,omitzero"`
	Backups      int       `json:"backups"`       // backups whose manifests were marked
	Referenced   int       `json:"referenced"`    // distinct chunk ids referenced
	Chunks       int       `json:"chunks"`        // chunk objects seen
	Young        int       `json:"young"`         // unreferenced but within the grace period
	Rescued      int       `json:"rescued"`       // condemned, then found referenced or held by a running backup
	Deleted      int       `json:"deleted"`       // deleted (or, dry run, would be)
	FreedBytes   int64     `json:"freed_bytes"`   // their stored size
	GraceSeconds int64     `json:"grace_seconds"` // grace applied
	// Packed repositories: packs seen, packs referenced by no backup (and
	// older than the grace period) deleted, their bytes counted in
	// FreedBytes.
	Packs        int `json:"packs,omitempty"`
	PacksDeleted int `json:"packs_deleted,omitempty"`
	// Compaction: packs whose live bytes were under RepackBelow of their
	// size (or, with Recompress, holding S2 chunks) rewritten — their live
	// chunks copied into new packs, the old ones deleted (FreedBytes counts
	// the difference). PackBytes and LiveBytes describe the packs seen.
	RepackBelow   float64 `json:"repack_below,omitempty"`
	PackBytes     int64   `json:"pack_bytes,omitempty"`
	LiveBytes     int64   `json:"live_bytes,omitempty"`
	PacksRepacked int     `json:"packs_repacked,omitempty"`
	PacksWritten  int     `json:"packs_written,omitempty"`
	ChunksMoved   int     `json:"chunks_moved,omitempty"`
	BytesRead     int64   `json:"bytes_read,omitempty"`
	BytesWritten  int64   `json:"bytes_written,omitempty"`
	Recompressed  int     `json:"recompressed,omitempty"`     // chunks re-encoded S2 → zstd
	RecompSaved   int64   `json:"recompress_saved,omitempty"` // bytes that saved
	PacksNotMoved int     `json:"packs_not_moved,omitempty"`  // left whole: a live chunk bad, or held by a backup
	MovedRecords  int     `json:"moved_records,omitempty"`    // records of compacted packs still needed
	MovedDeleted  int     `json:"moved_deleted,omitempty"`    // records no backup needs any more, deleted
	DanglingPacks int     `json:"dangling_packs,omitempty"`   // referenced packs neither stored nor moved (the verifier reports them)
	// Object Lock: units nothing references (or worth rewriting) left
	// alone because their retention has not passed; a run after it frees
	// them.
	Locked      int   `json:"locked,omitempty"`
	LockedBytes int64 `json:"locked_bytes,omitempty"`
}

func (m *GCReply) Validate() error { return checkSchema(m.Schema) }

// GCProgress is where a running collection is: its phase ("marking",
// "sweeping", "old packs rewritten and deleted"), how far
// (Done of Total; Total 0 when not known ahead) and the bytes the phase
// read or freed so far.
type GCProgress struct {
	Schema int    `json:"schema"`
	GC     string `json:"gc"`
	Phase  string `json:"phase"`
	Done   int64  `json:"done"`
	Total  int64  `json:"total,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
}

func (m *GCProgress) Validate() error { return checkSchema(m.Schema) }

// RepoStatsRequest asks dedup for the repository's numbers (strata repo
// stats). It reads every manifest and every pack's trailer: a maintenance
// question, never asked on the backup path.
type RepoStatsRequest struct {
	Schema int `json:"schema"`
}

func (m *RepoStatsRequest) Validate() error { return checkSchema(m.Schema) }

// RepoStatsReply describes a repository. Chunk counts of packs count a
// chunk stored twice twice; ratios are over the chunks live in packs.
type RepoStatsReply struct {
	Schema    int `json:"schema"`
	ChunkSize int `json:"chunk_size"`
	Backups   int `json:"backups"` // backups whose manifests were read
	// LogicalBytes: the disks' sizes summed over every backup (what a
	// restore of every point would write).
	LogicalBytes int64 `json:"logical_bytes"`
	// References: non-zero chunk entries over every manifest.
	References int64 `json:"references"`
	Packs      int   `json:"packs"`
	PackBytes  int64 `json:"pack_bytes"` // stored in packs, trailers included
	LiveChunks int64 `json:"live_chunks"`
	LiveBytes  int64 `json:"live_bytes"` // stored bytes of the chunks backups reference
	DeadBytes  int64 `json:"dead_bytes"` // PackBytes - LiveBytes
	// RepackBelow is the service's threshold; PacksBelow the packs whose
	// live share is under it (the next gc compacts them), holding
	// BelowDeadBytes dead bytes.
	RepackBelow    float64 `json:"repack_below"`
	PacksBelow     int     `json:"packs_below"`
	BelowDeadBytes int64   `json:"below_dead_bytes"`
	// LiveByCodec: live stored bytes by codec, from the packs' trailers
	// ("unknown": packs older than codecs in trailers).
	LiveByCodec  map[string]int64 `json:"live_by_codec"`
	LooseChunks  int              `json:"loose_chunks"`
	LooseBytes   int64            `json:"loose_bytes"`
	MovedRecords int              `json:"moved_records"`
	// DedupRatio: references per live chunk; CompressionRatio: the live
	// chunks' size (chunk size each) over their stored bytes.
	DedupRatio       float64    `json:"dedup_ratio"`
	CompressionRatio float64    `json:"compression_ratio"`
	LastGC           *GCReply   `json:"last_gc,omitempty"`
	LastGCAt         *time.Time `json:"last_gc_at,omitempty"`
}

func (m *RepoStatsReply) Validate() error { return checkSchema(m.Schema) }

// CancelRequest stops a running backup: it is failed with the reason
// "cancelled", its segments are skipped and its snapshot released.
type CancelRequest struct {
	Schema   int    `json:"schema"`
	VM       string `json:"vm"`
	BackupID string `json:"backup_id"`
}

func (m *CancelRequest) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if err := need("vm", m.VM); err != nil {
		return err
	}
	if !ValidToken(m.BackupID) {
		return fmt.Errorf("backup_id %q is not a valid id", m.BackupID)
	}
	return nil
}

// CancelReply tells the backup's state after the request: Cancelled is
// false when it had already ended (State says how).
type CancelReply struct {
	Schema    int    `json:"schema"`
	State     State  `json:"state"`
	Cancelled bool   `json:"cancelled"`
	Reason    string `json:"reason,omitempty"`
}

func (m *CancelReply) Validate() error { return checkSchema(m.Schema) }

// RemoveRequest removes backups that ended failed (or skipped): their
// record, catalog entry and any manifests. Verified backups are removed
// by retention (prune), never by this request.
type RemoveRequest struct {
	Schema    int      `json:"schema"`
	VM        string   `json:"vm"`
	BackupIDs []string `json:"backup_ids,omitempty"`
	AllFailed bool     `json:"all_failed,omitempty"` // every failed backup of the VM
}

func (m *RemoveRequest) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if err := need("vm", m.VM); err != nil {
		return err
	}
	if len(m.BackupIDs) == 0 && !m.AllFailed {
		return fmt.Errorf("name backups to remove, or all_failed")
	}
	for _, id := range m.BackupIDs {
		if !ValidToken(id) {
			return fmt.Errorf("backup id %q is not a valid id", id)
		}
	}
	return nil
}

// RemoveReply lists the removed backups.
type RemoveReply struct {
	Schema  int      `json:"schema"`
	Removed []string `json:"removed"`
}

func (m *RemoveReply) Validate() error { return checkSchema(m.Schema) }

// CheckSourceAllow checks STRATA_SOURCE_ALLOW's prefixes: each the start
// of a source URL of a known scheme.
func CheckSourceAllow(prefixes []string) error {
	for _, p := range prefixes {
		u, err := url.Parse(p)
		if err != nil || !slices.Contains(SourceSchemes, u.Scheme) || !strings.Contains(p, "://") {
			return fmt.Errorf("STRATA_SOURCE_ALLOW: prefix %q is not the start of a source URL (%s://…)", p, strings.Join(SourceSchemes, ":// "))
		}
	}
	return nil
}

// SourceUnder reports whether src equals one of the prefixes or continues
// it at a path boundary, and carries no credentials. Sources are clean
// (ValidateSource refuses ".."), so a prefix cannot be escaped.
func SourceUnder(prefixes []string, src string) bool {
	u, err := url.Parse(src)
	if err != nil {
		return false
	}
	for _, p := range prefixes {
		if src == p || (strings.HasPrefix(src, p) && (strings.HasSuffix(p, "/") || src[len(p)] == '/' || src[len(p)] == '?')) {
			return u.User == nil // credentials never ride in a source URL
		}
	}
	return false
}
