package contracts

import (
	"fmt"
	"time"
)

// VerifyMode is how hard the verifier looks at a backup.
type VerifyMode string

const (
	// VerifyStored: every manifest decodes and every chunk it names is
	// stored (an existence check; an incremental checks only the chunks
	// that differ from its verified parent). Always done; the default.
	VerifyStored VerifyMode = "stored"
	// VerifyTrivial: stored, plus the disk size and the first
	// STRATA_VERIFY_TRIVIAL_MIB read from the source and from the backup,
	// compared (XSIBackup's trivial check: it misses a change further in).
	VerifyTrivial VerifyMode = "trivial"
	// VerifyCertify: a digest over the ordered chunk ids of each disk,
	// computed from a full re-read of the source and from every stored
	// chunk downloaded, decoded and re-hashed; equal digests certify.
	VerifyCertify VerifyMode = "certify"
	// VerifyChunks: every chunk the backup references is downloaded and
	// re-hashed (Proxmox Backup Server's verify job).
	VerifyChunks VerifyMode = "chunks"
	// VerifyRestoreTest: every disk restored to a scratch file and checked
	// plausible — a sane MBR/GPT partition table, a filesystem superblock
	// (ext2/3/4, XFS, NTFS, FAT) or swap/LVM signature in every partition,
	// matching the source's where the source can still be read.
	VerifyRestoreTest VerifyMode = "restore-test"
)

// Validate accepts the known modes (and "" when empty is allowed).
func (m VerifyMode) Validate(emptyOK bool) error {
	switch m {
	case VerifyStored, VerifyTrivial, VerifyCertify, VerifyChunks, VerifyRestoreTest:
		return nil
	case "":
		if emptyOK {
			return nil
		}
	}
	return fmt.Errorf("verify mode %q: want stored, trivial, certify, chunks or restore-test", m)
}

// VerifyRequest asks the verifier to verify one backup now, or with All
// every committed backup of every VM (a chunks job: each chunk is read
// once however many backups share it).
type VerifyRequest struct {
	Schema   int        `json:"schema"`
	VM       string     `json:"vm,omitempty"`
	BackupID string     `json:"backup_id,omitempty"`
	All      bool       `json:"all,omitempty"`
	Mode     VerifyMode `json:"mode"`
}

func (m *VerifyRequest) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if err := m.Mode.Validate(false); err != nil {
		return err
	}
	if m.All {
		if m.Mode != VerifyChunks {
			return fmt.Errorf("all: only the chunks mode runs across every backup")
		}
		return nil
	}
	if err := need("vm", m.VM); err != nil {
		return err
	}
	if !ValidToken(m.BackupID) {
		return fmt.Errorf("backup_id %q is not a valid id", m.BackupID)
	}
	return nil
}

// VerifyReply reports a verification.
type VerifyReply struct {
	Schema  int        `json:"schema"`
	Mode    VerifyMode `json:"mode"`
	OK      bool       `json:"ok"`
	Problem string     `json:"problem,omitempty"`
	// Digests per disk (certify): from the source and from the store.
	Digests       []DiskDigest `json:"digests,omitempty"`
	ChunksChecked int          `json:"chunks_checked"`
	BytesChecked  int64        `json:"bytes_checked"`
	BadChunks     []BadChunk   `json:"bad_chunks,omitempty"`
	// Damaged: every backup referencing a bad chunk.
	Damaged []BackupRef `json:"damaged,omitempty"`
	Seconds float64     `json:"seconds"`
}

func (m *VerifyReply) Validate() error { return checkSchema(m.Schema) }

// DiskDigest is a disk's certify digest from both ends.
type DiskDigest struct {
	Disk   int    `json:"disk"`
	Source string `json:"source"`
	Stored string `json:"stored"`
}

// BadChunk is a chunk found corrupt or missing. Stored in the catalog
// bucket under BadChunkKey(id) until a re-check finds it good again.
type BadChunk struct {
	ID      string    `json:"id"`
	Reason  string    `json:"reason"`
	FoundAt time.Time `json:"found_at"`
}

// BackupRef names one backup.
type BackupRef struct {
	VM       string `json:"vm"`
	BackupID string `json:"backup_id"`
}

// CheckRequest asks for the repository's health: every known bad chunk is
// read again (a repaired one is cleared); every manifest of every
// committed backup is decoded and every chunk they reference is looked
// for in a listing of the store (Shards passes over the chunk-id space
// bound the memory); with ReadData (or ReadDataPercent of the chunks)
// every referenced chunk is also downloaded and re-hashed. Findings are
// recorded as the verifier records them; damaged backups are listed.
type CheckRequest struct {
	Schema          int     `json:"schema"`
	ReadData        bool    `json:"read_data,omitempty"`
	ReadDataPercent float64 `json:"read_data_percent,omitempty"` // 0 < p < 100: a random subset
	Shards          int     `json:"shards,omitempty"`            // 0: the verifier's STRATA_CHECK_SHARDS
}

func (m *CheckRequest) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if m.ReadDataPercent < 0 || m.ReadDataPercent > 100 {
		return fmt.Errorf("read_data_percent %g: want 0–100", m.ReadDataPercent)
	}
	if m.Shards != 0 {
		if err := ValidShards(m.Shards); err != nil {
			return fmt.Errorf("shards: %w", err)
		}
	}
	return nil
}

// CheckReply is the repository's health.
type CheckReply struct {
	Schema    int         `json:"schema"`
	Healthy   bool        `json:"healthy"`
	BadChunks []BadChunk  `json:"bad_chunks"`
	Repaired  []string    `json:"repaired"`
	Damaged   []BackupRef `json:"damaged"`
	// Failed: VMs meant to be backed up (a policy, or an earlier backup
	// that worked) whose newest backup failed (with the reason): their
	// latest point in time is not protected. Not healthy.
	Failed []FailedBackup `json:"failed"`
	// FailedIgnored: VMs with no policy and no backup that ever worked
	// whose only attempts failed (a mistyped name or source): listed, not
	// unhealthy; strata rm --failed removes them.
	FailedIgnored []FailedBackup `json:"failed_ignored"`
	Backups       int            `json:"backups"`
	// BadManifests: manifests that cannot be read or decoded.
	BadManifests []BadManifest `json:"bad_manifests"`
	// Referenced distinct chunks, the chunks the listing found, how many
	// referenced ones are missing, and how many were read back.
	Referenced int64   `json:"referenced"`
	Listed     int64   `json:"listed"`
	Missing    int64   `json:"missing"`
	ChunksRead int     `json:"chunks_read"`
	BytesRead  int64   `json:"bytes_read"`
	Seconds    float64 `json:"seconds"`
}

// BadManifest is a manifest that cannot be read or decoded: its backup
// cannot be restored.
type BadManifest struct {
	VM       string `json:"vm"`
	BackupID string `json:"backup_id"`
	Disk     int    `json:"disk"`
	Key      string `json:"key"`
	Reason   string `json:"reason"`
}

// FailedBackup is a backup that ended failed, and why.
type FailedBackup struct {
	VM       string `json:"vm"`
	BackupID string `json:"backup_id"`
	Reason   string `json:"reason"`
}

func (m *CheckReply) Validate() error { return checkSchema(m.Schema) }

// A chunks verification job over every backup is split into ChunkCheck
// batches on a work queue that transfer workers consume in parallel; each
// answers one ChunkChecked.
const (
	// SubjectChunkCheckPrefix + "<job>.<n>": verifier → transfer. ChunkCheck.
	SubjectChunkCheckPrefix = "strata.transfer.verify."
	// SubjectChunkCheckedPrefix + "<job>.<n>": transfer → verifier. ChunkChecked
	// (one per subject in STRATA_RESULTS, read back by direct get).
	SubjectChunkCheckedPrefix = "strata.verify.done."
	// SubjectVerifyJob: scheduler → verifier, on STRATA_VERIFY_JOB_SCHEDULE.
	SubjectVerifyJob = "strata.backup.verify-job"

	ConsumerTransferVerify = "transfer-verify"
	ConsumerVerifierJobs   = "verifier-jobs"
)

// ChunkCheck asks a transfer worker to download and re-hash chunks.
type ChunkCheck struct {
	Schema int      `json:"schema"`
	Job    string   `json:"job"`
	Index  int      `json:"index"`
	IDs    []string `json:"ids"`
	// Where chunks of a packed repository are (At: index in IDs); the
	// others are read from their own objects.
	Packs []string   `json:"packs,omitempty"`
	Locs  []ChunkLoc `json:"locs,omitempty"`
}

func (m *ChunkCheck) Validate() error {
	if err := checkSchema(m.Schema); err != nil {
		return err
	}
	if !ValidToken(m.Job) || m.Index < 0 {
		return fmt.Errorf("job %q index %d: not a valid batch", m.Job, m.Index)
	}
	if err := validChunkIDs(m.IDs); err != nil {
		return err
	}
	return validLocs(m.Packs, m.Locs, len(m.IDs))
}

// Subject of the batch on the work queue.
func (m *ChunkCheck) Subject() string {
	return fmt.Sprintf("%s%s.%d", SubjectChunkCheckPrefix, m.Job, m.Index)
}

// ChunkCheckedSubject is where a batch's answer goes.
func ChunkCheckedSubject(job string, index int) string {
	return fmt.Sprintf("%s%s.%d", SubjectChunkCheckedPrefix, job, index)
}

// ChunkChecked answers one ChunkCheck.
type ChunkChecked struct {
	Schema  int        `json:"schema"`
	Job     string     `json:"job"`
	Index   int        `json:"index"`
	Checked int        `json:"checked"`
	Bytes   int64      `json:"bytes"`
	Bad     []BadChunk `json:"bad,omitempty"`
	Worker  string     `json:"worker,omitempty"`
}

func (m *ChunkChecked) Validate() error { return checkSchema(m.Schema) }

// VerifyJob starts a chunks verification of every backup.
type VerifyJob struct {
	Schema int       `json:"schema"`
	Slot   time.Time `json:"slot"`
}

func (m *VerifyJob) Validate() error { return checkSchema(m.Schema) }

// ValidShards checks a number of passes over the chunk-id space (garbage
// collection, check): they split the 256 first-byte values evenly.
func ValidShards(n int) error {
	if n < 1 || n > 256 || 256%n != 0 {
		return fmt.Errorf("%d is not a power of two from 1 to 256", n)
	}
	return nil
}
