// Command moat is a hardened MQTT broker: mosquitto-compatible configuration,
// password and ACL files, automatic certificates and encrypted persistence.
package main

import (
	"fmt"
	"io"
	"os"
)

// version is set at build time by the Makefile.
var version = "dev"

// stdio is what a subcommand may read and write; tests pass buffers.
type stdio struct {
	in       io.Reader
	out, err io.Writer
}

type command struct {
	name, usage string
	run         func(args []string, io stdio) int
}

func commands() []command {
	return []command{
		{"serve", "run the broker: serve [-c FILE]", runServe},
		{"check-config", "check a configuration and every file it names: check-config -c FILE", runCheckConfig},
		{"passwd", "manage a mosquitto-compatible password file (as mosquitto_passwd)", runPasswd},
		{"acl", "explain an ACL decision: acl explain -c FILE [-i CLIENTID] USER read|write|subscribe TOPIC", runACL},
		{"cert", "certificate status or forced renewal: cert status|renew -c FILE", runCert},
		{"health", "exit 0 when the running broker is ready: health [-c FILE]", runHealth},
		{"import", "load another broker's retained messages: import mosquitto-db -c FILE [-replace] [-n] MOSQUITTO_DB", runImport},
		{"version", "print the version", runVersion},
	}
}

func main() {
	os.Exit(run(os.Args[1:], stdio{os.Stdin, os.Stdout, os.Stderr}))
}

func run(args []string, io stdio) int {
	if len(args) == 0 {
		usage(io.err)
		return 2
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], io)
		}
	}
	if isHelp(args[0]) {
		usage(io.out)
		return 0
	}
	fmt.Fprintf(io.err, "moat: unknown command %q\n", args[0])
	usage(io.err)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: moat COMMAND [ARGS]")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.usage)
	}
}

func runVersion(_ []string, io stdio) int {
	fmt.Fprintf(io.out, "moat %s\n", version)
	return 0
}
