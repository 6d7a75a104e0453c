package contracts

import (
	"fmt"
	"time"
)

// State of a backup. A record is created transferring (once the
// snapshotter has planned it: its disks and segments are known), skipped (a
// slot that found the previous backup still running) or failed (a request
// refused before planning); then transferring → committed → verified, and
// any non-final state → failed. verified, failed and skipped are final.
// Moves lists every allowed move; pkg/catalog refuses any other. Damage is
// a flag beside the state (Damaged), set and cleared on committed and
// verified records.
type State string

const (
	StateTransferring State = "transferring"
	StateCommitted    State = "committed"
	StateVerified     State = "verified"
	StateFailed       State = "failed"
	// StateSkipped: a scheduled slot that found the VM's previous backup
	// still running. Nothing was read or stored.
	StateSkipped State = "skipped"
)

// Kind of backup: what was read from the source.
type Kind string

const (
	KindFull        Kind = "full"        // every allocated chunk read (still deduplicated)
	KindIncremental Kind = "incremental" // only changed extents read; the rest from the parent
)

// Final reports whether no further transition is allowed.
func (s State) Final() bool { return s == StateVerified || s == StateFailed || s == StateSkipped }

// StateNone is the state before a record exists: moves from it are the
// states a record may be created in.
const StateNone State = ""

// Moves is the lifecycle of a backup record: for each state, the states it
// may move to.
var Moves = map[State][]State{
	StateNone:         {StateTransferring, StateSkipped, StateFailed},
	StateTransferring: {StateCommitted, StateFailed},
	StateCommitted:    {StateVerified, StateFailed},
}

// CanMove reports whether a record may move from one state to another
// (staying in a state is no move, and always allowed).
func CanMove(from, to State) bool {
	if from == to {
		return true
	}
	for _, s := range Moves[from] {
		if s == to {
			return true
		}
	}
	return false
}

// BackupRecord is the catalog entry of one backup (KV) and, once committed,
// the backups/<vm>/<id>.json object in the repository.
type BackupRecord struct {
	Schema     int        `json:"schema"`
	ID         string     `json:"id"`
	VM         string     `json:"vm"`
	Source     string     `json:"source"`
	State      State      `json:"state"`
	Kind       Kind       `json:"kind,omitempty"`
	Parent     string     `json:"parent,omitempty"`      // backup this one is incremental to
	Slot       *time.Time `json:"slot,omitempty"`        // schedule slot that fired it
	ChainDepth int        `json:"chain_depth,omitempty"` // incrementals since the last full
	FullReason string     `json:"full_reason,omitempty"` // why a full read when a parent existed
	// Base: the verified backup a full read compared its chunks against
	// (Segment.Parent); not a chain link — a full stands alone — but what
	// lets verification skip the chunks it shares with that backup.
	Base string `json:"base,omitempty"`
	Note string `json:"note,omitempty"` // what the source wants the user to know
	// Consistency the snapshot got (application, filesystem, crash), why
	// when it is not what was asked for, and how long the guest's
	// filesystems were frozen.
	Consistency    string `json:"consistency,omitempty"`
	ConsistencyWhy string `json:"consistency_why,omitempty"`
	FrozenMillis   int64  `json:"frozen_ms,omitempty"`
	// Hooks are the pre-freeze and post-thaw hooks that ran, in order.
	Hooks  []HookRun  `json:"hooks,omitempty"`
	Verify VerifyMode `json:"verify,omitempty"` // mode run on commit
	// Damaged: the backup references a chunk found bad (see strata check);
	// cleared when the chunk is repaired.
	Damaged    bool         `json:"damaged,omitempty"`
	Error      string       `json:"error,omitempty"`
	ChunkSize  int          `json:"chunk_size"`
	TraceID    string       `json:"trace_id,omitempty"`
	CreatedAt  time.Time    `json:"created_at"`
	UpdatedAt  time.Time    `json:"updated_at"`
	FinishedAt *time.Time   `json:"finished_at,omitempty"`
	Disks      []DiskRecord `json:"disks"`
	VMConfig   *VMConfig    `json:"vm_config,omitempty"`
}

// VMConfig is the virtual hardware of a backed-up VM (vSphere), kept so a
// restore recreates a VM like it, even once the original is gone.
type VMConfig struct {
	GuestID  string `json:"guest_id,omitempty"`
	CPUs     int32  `json:"cpus,omitempty"`
	MemoryMB int64  `json:"memory_mb,omitempty"`
	Firmware string `json:"firmware,omitempty"` // bios, efi
	// DomainXML is a libvirt domain's definition as it was backed up (a
	// restore into libvirt defines the new domain from it).
	DomainXML string `json:"domain_xml,omitempty"`
}

// DiskRecord describes one disk of a backup.
type DiskRecord struct {
	Index        int    `json:"index"`
	Name         string `json:"name"`
	Source       string `json:"source,omitempty"` // URL the disk was read from (one disk of a snapshot)
	Size         int64  `json:"size"`
	Segments     int    `json:"segments"`
	SegmentsDone int    `json:"segments_done"`
	DoneBitmap   []byte `json:"done_bitmap,omitempty"` // bit i: segment i's result is in
	// Untouched: bit i says segment i had nothing to read — of an
	// incremental, no change there since the parent (merge takes its chunk
	// ids from the parent); of a full, nothing allocated (zeros). It is
	// never published and counts as done from the start: a backup's
	// messages follow the change or the data, not the disk size.
	Untouched      []byte `json:"untouched,omitempty"`
	Manifest       string `json:"manifest,omitempty"` // object key, set at commit
	Chunks         int64  `json:"chunks,omitempty"`
	ZeroChunks     int64  `json:"zero_chunks,omitempty"`
	UploadedChunks int64  `json:"uploaded_chunks,omitempty"`
	UploadedBytes  int64  `json:"uploaded_bytes,omitempty"`
	ReadBytes      int64  `json:"read_bytes,omitempty"`    // bytes read from the source
	ChangeID       string `json:"change_id,omitempty"`     // change tracking point this backup consumed
	ChangedBytes   int64  `json:"changed_bytes,omitempty"` // incrementals: bytes the source reported changed
	Digest         string `json:"digest,omitempty"`        // certify: digest of the chunk map, equal at both ends
	// FreeMap (--skip-free full reads) says which filesystems' allocation
	// bitmaps were read and what they gave; FreeSkippedBytes is what was
	// therefore not read and is stored as zeros. Certify re-reads the
	// source through the same bitmaps.
	FreeMap          string `json:"free_map,omitempty"`
	FreeSkippedBytes int64  `json:"free_skipped_bytes,omitempty"`
}

func (r *BackupRecord) Validate() error {
	if err := checkSchema(r.Schema); err != nil {
		return err
	}
	if !ValidToken(r.ID) {
		return fmt.Errorf("id %q is not a valid id", r.ID)
	}
	if err := need("vm", r.VM); err != nil {
		return err
	}
	switch r.State {
	case StateTransferring, StateCommitted, StateVerified, StateFailed, StateSkipped:
	default:
		return fmt.Errorf("state %q unknown", r.State)
	}
	if err := ValidChunkSize(r.ChunkSize); err != nil {
		return err
	}
	for i, d := range r.Disks {
		if d.Index != i || d.Size <= 0 || d.Segments <= 0 {
			return fmt.Errorf("disk %d: bad index, size or segment count", i)
		}
		if len(d.Untouched) > (d.Segments+7)/8 || len(d.DoneBitmap) > (d.Segments+7)/8 {
			return fmt.Errorf("disk %d: segment bitmaps longer than its %d segments", i, d.Segments)
		}
	}
	return nil
}

// Size is the sum of the disks' sizes.
func (r *BackupRecord) Size() int64 {
	var n int64
	for _, d := range r.Disks {
		n += d.Size
	}
	return n
}

// ReadBytes is what this backup read from its source.
func (r *BackupRecord) ReadBytes() int64 {
	var n int64
	for _, d := range r.Disks {
		n += d.ReadBytes
	}
	return n
}

// StoredBytes is what this backup added to the repository (compressed).
func (r *BackupRecord) StoredBytes() int64 {
	var n int64
	for _, d := range r.Disks {
		n += d.UploadedBytes
	}
	return n
}

// MarkSegmentDone sets segment i's bit; it reports whether it was new.
func (d *DiskRecord) MarkSegmentDone(i int) bool {
	if len(d.DoneBitmap) < (d.Segments+7)/8 {
		d.DoneBitmap = append(d.DoneBitmap, make([]byte, (d.Segments+7)/8-len(d.DoneBitmap))...)
	}
	if d.DoneBitmap[i/8]&(1<<(i%8)) != 0 {
		return false
	}
	d.DoneBitmap[i/8] |= 1 << (i % 8)
	d.SegmentsDone++
	return true
}

// MarkUntouched records segment i as having nothing to read (and so done).
func (d *DiskRecord) MarkUntouched(i int) {
	if len(d.Untouched) < (d.Segments+7)/8 {
		d.Untouched = append(d.Untouched, make([]byte, (d.Segments+7)/8-len(d.Untouched))...)
	}
	d.Untouched[i/8] |= 1 << (i % 8)
	d.MarkSegmentDone(i)
}

// IsUntouched reports whether segment i was recorded as having nothing to
// read.
func (d *DiskRecord) IsUntouched(i int) bool {
	return i >= 0 && i/8 < len(d.Untouched) && d.Untouched[i/8]&(1<<(i%8)) != 0
}

// SegmentLayout cuts a disk of size bytes into segments of whole chunks of
// at most MaxSegmentBytes: chunksPerSegment chunks each (the last may be
// shorter), segments in all.
func SegmentLayout(size int64, chunkSize int) (chunksPerSegment int, segments int) {
	chunksPerSegment = MaxSegmentBytes / chunkSize
	total := (size + int64(chunkSize) - 1) / int64(chunkSize)
	return chunksPerSegment, int((total + int64(chunksPerSegment) - 1) / int64(chunksPerSegment))
}

// SegmentsDone counts finished segments over all disks.
func (r *BackupRecord) SegmentsDone() int {
	n := 0
	for _, d := range r.Disks {
		n += d.SegmentsDone
	}
	return n
}

// Segments is the number of transfer segments over all disks.
func (r *BackupRecord) Segments() int {
	n := 0
	for _, d := range r.Disks {
		n += d.Segments
	}
	return n
}
