// Command kube-controller-manager is a thin wrapper that runs the upstream kube-controller-manager
// command, so the dyndisc test suite can run the real EndpointSlice controller and garbage collector
// against its test kube-apiserver without Docker.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
