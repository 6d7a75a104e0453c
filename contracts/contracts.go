// Package contracts is the single source of truth for everything Strata's
// services say to each other over NATS: subjects, streams, consumers, KV
// buckets and message types. Every message carries a schema version and has a
// Validate method; a message that fails to decode or validate is dead-lettered
// (see pkg/bus), never retried forever.
package contracts

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// SchemaVersion is the version every message is written with. Readers accept
// exactly this version; a future version bump adds explicit upgrade code.
const SchemaVersion = 1

// Subjects. Wildcard tokens are documented on each constant.
const (
	// SubjectBackupRequested: scheduler → snapshotter. BackupRequested.
	SubjectBackupRequested = "strata.backup.requested"
	// SubjectBackupCommitted: merge → verifier. BackupCommitted.
	SubjectBackupCommitted = "strata.backup.committed"
	// SubjectBackupVerified / SubjectBackupFailed: verifier (or any service
	// that hits a permanent failure) → snapshotter and scheduler. BackupOutcome.
	SubjectBackupVerified = "strata.backup.verified"
	SubjectBackupFailed   = "strata.backup.failed"
	// SubjectTrigger: event trigger from outside (hypervisor events, scripts):
	// the scheduler turns it into a backup. BackupTrigger.
	SubjectTrigger = "strata.trigger.backup"

	// SubjectSegmentPrefix + "<backup>.<disk>.<seg>": snapshotter → transfer.
	// Segment. One message per ≤64 MiB range of one disk.
	SubjectSegmentPrefix = "strata.transfer.segment."
	// SubjectSegmentDonePrefix + "<backup>.<disk>.<seg>": transfer → merge.
	// SegmentDone. The stream keeps one message per subject, so a redelivered
	// segment replaces its own earlier result instead of adding a second one.
	SubjectSegmentDonePrefix = "strata.segment.done."

	// SubjectPackStoredPrefix + "<pack id>": transfer → every dedup
	// instance. PackStored: a pack and the chunks it holds.
	SubjectPackStoredPrefix = "strata.pack.stored."
	// SubjectPackRetained: merge → every dedup instance. PackRetained:
	// retain-until dates merge set on packs (Object Lock), kept in the
	// pack index so garbage collection never asks S3 for them.
	SubjectPackRetained = "strata.pack.retained"

	// SubjectDLQPrefix + original subject: messages that could not be decoded,
	// validated or handled. Headers carry the reason.
	SubjectDLQPrefix = "strata.dlq."

	// Request/reply endpoints (nats micro services).
	SubjectDedupMissing = "strata.dedup.missing"    // MissingRequest → MissingReply
	SubjectSchedulerRun = "strata.scheduler.backup" // BackupTrigger → BackupAccepted
	SubjectMergePrune   = "strata.merge.prune"      // PruneRequest → PruneReply
	// SubjectSchedulerCancel: CancelRequest → CancelReply (strata cancel).
	SubjectSchedulerCancel = "strata.scheduler.cancel"
	// SubjectMergeRemove: RemoveRequest → RemoveReply (strata rm).
	SubjectMergeRemove = "strata.merge.remove"
	SubjectDedupGC     = "strata.dedup.gc"    // GCRequest → GCReply
	SubjectDedupStats  = "strata.dedup.stats" // RepoStatsRequest → RepoStatsReply
	// SubjectGCProgress: dedup → whoever listens (strata gc on a
	// terminal): GCProgress, at most twice a second while a collection
	// runs. Core NATS: a lost message loses nothing.
	SubjectGCProgress = "strata.gc.progress"
	SubjectVerify     = "strata.verifier.verify" // VerifyRequest → VerifyReply
	SubjectCheck      = "strata.verifier.check"  // CheckRequest → CheckReply
)

// Headers used beside W3C trace context.
const (
	HeaderDLQReason  = "Strata-Dlq-Reason"
	HeaderDLQSubject = "Strata-Dlq-Subject"
	HeaderDLQService = "Strata-Dlq-Service"
)

// Streams and the subjects each one captures.
const (
	StreamBackups  = "STRATA_BACKUPS"  // strata.backup.>, strata.trigger.> (limits, events)
	StreamSegments = "STRATA_SEGMENTS" // strata.transfer.segment.> (work queue)
	StreamResults  = "STRATA_RESULTS"  // strata.segment.done.> (one per subject)
	StreamDLQ      = "STRATA_DLQ"      // strata.dlq.>
	StreamPacks    = "STRATA_PACKS"    // strata.pack.> (limits: dedup indexes replay it)
)

// Durable consumer names.
const (
	ConsumerSnapshotterRequests = "snapshotter-requests"
	ConsumerSnapshotterOutcomes = "snapshotter-outcomes"
	ConsumerTransfer            = "transfer"
	ConsumerMerge               = "merge"
	ConsumerVerifier            = "verifier"
	ConsumerMergeRetention      = "merge-retention"
	ConsumerMergeCopy           = "merge-copy"
	ConsumerMergeMirror         = "merge-mirror"
	ConsumerSchedulerOutcomes   = "scheduler-outcomes"
	ConsumerSchedulerTriggers   = "scheduler-triggers"
	ConsumerSchedulerDeadlines  = "scheduler-deadlines"
	ConsumerNotify              = "notify"
)

// KV buckets.
const (
	// BucketCatalog: key CatalogKey(vm, backup) → BackupRecord (JSON).
	// Rebuildable from backups/… records in object storage.
	BucketCatalog = "strata_catalog"
	// BucketPolicies: key PolicyKey(vm) → Policy (JSON).
	BucketPolicies = "strata_policies"
	// BucketMirrors: key MirrorKey(vm) → Mirror (JSON): standby mirrors
	// and the point each holds (pkg/mirror).
	BucketMirrors = "strata_mirrors"
	// BucketFreezes: key FreezeKey(vm) → Freeze (JSON): guests frozen for
	// a snapshot right now (pkg/freezes).
	BucketFreezes = "strata_freezes"
	// BucketGCHolds: key GCHoldKey(gc, chunk) → "held" (dedup: a running
	// backup reuses this condemned chunk, do not delete it), "deleting" or
	// "deleted" (the collector claimed it). Entries expire after a day.
	BucketGCHolds = "strata_gc_holds"
	// BucketBadChunks: key chunk id (hex) → BadChunk (JSON): chunks found
	// corrupt or missing, until a backup stores them again (pkg/badchunks).
	BucketBadChunks = "strata_bad_chunks"
	// BucketGC: key GCLockKey → GCLock, present while garbage collection
	// runs (pkg/gclock).
	BucketGC  = "strata_gc"
	GCLockKey = "lock"
	// GCLastKey (bucket BucketGC) → GCReply of the last collection that
	// finished (not dry runs), for strata repo stats.
	GCLastKey = "last"

	// BucketNotify: key NotifyKey(name) → NotifyTarget (JSON): where job
	// reports go (pkg/notify).
	BucketNotify = "strata_notify"
	// BucketNotifySent: key NotifySentKey(target, backup) → "sent": the
	// reports delivered, so that a redelivered outcome sends none again.
	// Entries expire after 30 days.
	BucketNotifySent = "strata_notify_sent"

	// Hold states in BucketGCHolds.
	GCHeld     = "held"
	GCDeleting = "deleting"
	GCDeleted  = "deleted"
)

// Buckets are every KV bucket Strata keeps.
var Buckets = []string{BucketCatalog, BucketPolicies, BucketMirrors, BucketFreezes, BucketGCHolds, BucketBadChunks, BucketGC, BucketNotify, BucketNotifySent}

// MaxSegmentBytes bounds one transfer work item.
const MaxSegmentBytes = 64 << 20

// Message is implemented by every message type.
type Message interface {
	Validate() error
}

// Decode unmarshals data into m strictly (unknown fields are an error, as
// they mean a writer speaks a schema we do not) and validates it.
func Decode(data []byte, m Message) error {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(m); err != nil {
		return fmt.Errorf("decode %T: %w", m, err)
	}
	if dec.More() {
		return fmt.Errorf("decode %T: trailing data", m)
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("invalid %T: %w", m, err)
	}
	return nil
}

// Encode validates and marshals m; a service never sends what it would refuse.
func Encode(m Message) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("refusing to send invalid %T: %w", m, err)
	}
	return json.Marshal(m)
}

func checkSchema(v int) error {
	if v != SchemaVersion {
		return fmt.Errorf("schema version %d, want %d", v, SchemaVersion)
	}
	return nil
}

// ValidToken reports whether s can be used as one NATS subject token and
// one KV key token: ids we generate (UUIDs) always can.
func ValidToken(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

var errEmpty = errors.New("must not be empty")

func need(name, v string) error {
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("%s: %w", name, errEmpty)
	}
	return nil
}
