module github.com/strata-backup/strata/services/scheduler

go 1.26

require (
	github.com/strata-backup/strata/contracts v0.0.0
	github.com/strata-backup/strata/pkg v0.0.0
)

replace (
	github.com/strata-backup/strata/contracts => ../../contracts
	github.com/strata-backup/strata/pkg => ../../pkg
)
