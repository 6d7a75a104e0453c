module github.com/strata-backup/strata/internal

go 1.26.0
