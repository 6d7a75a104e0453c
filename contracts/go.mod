module github.com/strata-backup/strata/contracts

go 1.26
