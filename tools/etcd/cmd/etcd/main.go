// Command etcd is a thin wrapper that runs the upstream etcd server command (go.etcd.io/etcd/server/v3's
// etcdmain), so the dyndisc test suite runs against a current etcd built from the published Go modules.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
