// Command kube-apiserver is a thin wrapper that runs the upstream kube-apiserver command, so the
// dyndisc test suite can exercise its Kubernetes backend against a real API server without Docker.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
