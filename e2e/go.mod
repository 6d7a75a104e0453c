module github.com/strata-backup/strata/e2e

go 1.26.0

require (
	github.com/nats-io/nats.go v1.55.0
	github.com/strata-backup/strata/contracts v0.0.0
	github.com/strata-backup/strata/pkg v0.0.0
	github.com/vmware/govmomi v0.56.0
)

require (
	github.com/aws/aws-sdk-go-v2 v1.48.0 // indirect
	github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream v1.7.27 // indirect
	github.com/aws/aws-sdk-go-v2/credentials v1.21.0 // indirect
	github.com/aws/aws-sdk-go-v2/internal/configsources v1.5.12 // indirect
	github.com/aws/aws-sdk-go-v2/internal/endpoints/v2 v2.8.12 // indirect
	github.com/aws/aws-sdk-go-v2/internal/v4a v1.5.12 // indirect
	github.com/aws/aws-sdk-go-v2/service/internal/accept-encoding v1.13.25 // indirect
	github.com/aws/aws-sdk-go-v2/service/internal/checksum v1.11.13 // indirect
	github.com/aws/aws-sdk-go-v2/service/internal/presigned-url v1.14.12 // indirect
	github.com/aws/aws-sdk-go-v2/service/internal/s3shared v1.20.12 // indirect
	github.com/aws/aws-sdk-go-v2/service/s3 v1.114.10 // indirect
	github.com/aws/smithy-go v1.28.9 // indirect
	github.com/chromedp/cdproto v0.160.1 // indirect
	github.com/chromedp/chromedp v0.23.1 // indirect
	github.com/digitalocean/go-libvirt v0.0.0-20261013170128-efbbdf578ac8 // indirect
	github.com/go-json-experiment/json v0.0.0-20260213210345-44df1a37e875 // indirect
	libvirt.org/go/libvirtxml v1.12008.0 // indirect
)

require (
	github.com/google/uuid v1.6.0 // indirect
	github.com/klauspost/compress v1.20.4 // indirect
	github.com/nats-io/nkeys v0.4.16 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	github.com/strata-backup/strata/internal v0.0.0
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/sys v0.50.0
	gopkg.in/yaml.v3 v3.0.1 // indirect
)

replace (
	github.com/strata-backup/strata/contracts => ../contracts
	github.com/strata-backup/strata/pkg => ../pkg
	github.com/strata-backup/strata/services/dedup => ../services/dedup
	github.com/strata-backup/strata/services/merge => ../services/merge
	github.com/strata-backup/strata/services/scheduler => ../services/scheduler
	github.com/strata-backup/strata/services/snapshotter => ../services/snapshotter
	github.com/strata-backup/strata/services/transfer => ../services/transfer
	github.com/strata-backup/strata/services/verifier => ../services/verifier
)

replace github.com/strata-backup/strata/internal => ../internal
