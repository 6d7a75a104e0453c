module github.com/strata-backup/strata/cmd/strata

go 1.26

require (
	github.com/strata-backup/strata/contracts v0.0.0
	github.com/strata-backup/strata/pkg v0.0.0
	github.com/strata-backup/strata/services/scheduler v0.0.0
	github.com/strata-backup/strata/services/snapshotter v0.0.0
	github.com/strata-backup/strata/services/transfer v0.0.0
	github.com/strata-backup/strata/services/dedup v0.0.0
	github.com/strata-backup/strata/services/merge v0.0.0
	github.com/strata-backup/strata/services/verifier v0.0.0
)

replace (
	github.com/strata-backup/strata/contracts => ../../contracts
	github.com/strata-backup/strata/pkg => ../../pkg
	github.com/strata-backup/strata/services/scheduler => ../../services/scheduler
	github.com/strata-backup/strata/services/snapshotter => ../../services/snapshotter
	github.com/strata-backup/strata/services/transfer => ../../services/transfer
	github.com/strata-backup/strata/services/dedup => ../../services/dedup
	github.com/strata-backup/strata/services/merge => ../../services/merge
	github.com/strata-backup/strata/services/verifier => ../../services/verifier
)
