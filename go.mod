module github.com/nftknock/nftknock

go 1.26

require (
	filippo.io/edwards25519 v1.2.0
	github.com/BurntSushi/toml v1.6.0
	github.com/google/nftables v0.3.0
	github.com/mdlayher/netlink v1.11.2
	go.uber.org/zap v1.28.0
	golang.org/x/crypto v0.50.0
	golang.org/x/sync v0.20.0
	golang.org/x/sys v0.43.0
)

require (
	github.com/google/go-cmp v0.7.0 // indirect
	github.com/mdlayher/socket v0.6.0 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	golang.org/x/net v0.53.0 // indirect
)
