// Command etcdctl is a thin wrapper that runs the upstream etcdctl (go.etcd.io/etcd/etcdctl/v3's ctlv3), so
// the tests can run the etcdctl commands dyndisc prints (dyndisc access etcd --dry-run) against the etcd
// they start, at the same version.
package main

import (
	"go.etcd.io/etcd/etcdctl/v3/ctlv3"
)

func main() {
	ctlv3.MustStart()
}
