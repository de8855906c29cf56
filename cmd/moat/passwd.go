package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/moat-mqtt/moat/internal/passwd"
)

const passwdUsage = `usage: moat passwd [-H sha512-pbkdf2|sha512|argon2id] [-I N] [-c | -D] FILE USER
       moat passwd [-H sha512-pbkdf2|sha512|argon2id] [-I N] [-c] -b FILE USER PASSWORD
       moat passwd [-H sha512-pbkdf2|sha512|argon2id] [-I N] -U FILE
Manage a mosquitto-compatible password file (flags as mosquitto_passwd 2.0).
 -b  batch mode: take the password from the command line (visible to other users in ps)
 -c  create a new file, overwriting an existing one
 -D  delete USER instead of setting their password
 -H  hash algorithm: sha512-pbkdf2 ($7$, default, read by mosquitto 2.0), sha512 ($6$),
     argon2id (mosquitto 2.1 only)
 -I  iterations: PBKDF2 rounds for sha512-pbkdf2 (default 210000), time cost for argon2id
 -U  hash every plaintext user:password line of FILE in place
Without -b the password is asked twice; from a terminal it is not echoed,
otherwise two lines are read from standard input. New files get mode 0600.
FILE is rewritten in place (same inode, owner and mode, so a bind mount of it
sees the edit); a complete copy is kept in .FILE.moat-pending until then.
`

// runPasswd is `moat passwd`: flag parsing and prompting; the file work is internal/passwd's.
func runPasswd(args []string, io stdio) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder)) // errors are reported below, with the usage
	create := fs.Bool("c", false, "")
	batch := fs.Bool("b", false, "")
	del := fs.Bool("D", false, "")
	convert := fs.Bool("U", false, "")
	alg := fs.String("H", passwd.AlgPBKDF2, "")
	iters := fs.Int("I", 0, "")
	usageErr := func(msg string) int {
		if msg != "" {
			fmt.Fprintf(io.err, "Error: %s\n", msg)
		}
		fmt.Fprint(io.err, passwdUsage)
		return 1
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(io.out, passwdUsage)
			return 0
		}
		return usageErr(err.Error())
	}
	setI := false
	fs.Visit(func(f *flag.Flag) { setI = setI || f.Name == "I" })
	if setI && *iters <= 0 {
		return usageErr("number of iterations must be > 0")
	}
	switch *alg {
	case passwd.AlgPBKDF2, passwd.AlgSHA512, passwd.AlgArgon2id:
	default:
		return usageErr(fmt.Sprintf("unknown hash type %q", *alg))
	}
	pos := fs.Args()
	fail := func(err error) int {
		fmt.Fprintf(io.err, "Error: %v\n", err)
		return 1
	}

	switch {
	case *convert:
		if *create || *del || *batch {
			return usageErr("-U cannot be used with -c, -D or -b")
		}
		if len(pos) != 1 {
			return usageErr("-U takes exactly one argument, the password file")
		}
		n, err := passwd.ConvertPlaintext(pos[0], *alg, *iters)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(io.out, "%d plaintext passwords hashed in %s\n", n, pos[0])
		return checkAfterWrite(pos[0], io)
	case *create && *del:
		return usageErr("-c and -D cannot be used together")
	case *del:
		if *batch {
			return usageErr("-b cannot be used with -D")
		}
		if len(pos) != 2 {
			return usageErr("-D takes the password file and a username")
		}
		if err := passwd.DeleteUser(pos[0], pos[1]); err != nil {
			if errors.Is(err, passwd.ErrUserNotFound) {
				fmt.Fprintf(io.err, "Warning: User %s not found in password file.\n", pos[1])
				return 1
			}
			return fail(err)
		}
		return checkAfterWrite(pos[0], io)
	}

	want := 2
	if *batch {
		want = 3
	}
	if len(pos) != want {
		return usageErr("")
	}
	file, user := pos[0], pos[1]
	if err := passwd.ValidateUsername(user); err != nil {
		return fail(err)
	}
	if !*create {
		// Fail before asking for a password that could not be stored.
		if _, err := os.Stat(file); err != nil {
			return fail(fmt.Errorf("unable to open password file: %w", err))
		}
	}
	var pw []byte
	if *batch {
		pw = []byte(pos[2])
	} else {
		var err error
		if pw, err = promptPassword(io); err != nil {
			return fail(err)
		}
	}
	defer clear(pw)
	if err := passwd.ValidatePassword(pw); err != nil {
		return fail(err)
	}
	if err := passwd.SetPassword(file, user, pw, *alg, *iters, *create); err != nil {
		return fail(err)
	}
	return checkAfterWrite(file, io)
}

// checkAfterWrite warns about what the broker will refuse to load; the edit
// itself succeeded, so it does not change the exit code.
func checkAfterWrite(file string, io stdio) int {
	if _, err := passwd.Load(file); err != nil {
		fmt.Fprintf(io.err, "Warning: Moat will refuse %s until these are fixed:\n%v\n", file, err)
	}
	if fi, err := os.Stat(file); err == nil && fi.Mode().Perm()&0o007 != 0 {
		fmt.Fprintf(io.err, "Warning: %s is accessible by other users (mode %04o); run chmod o-rwx on it.\n", file, fi.Mode().Perm())
	}
	return 0
}

// promptPassword asks for the password twice: without echo from a terminal,
// else as two lines of standard input.
func promptPassword(io stdio) ([]byte, error) {
	if f, ok := io.in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		read := func(prompt string) ([]byte, error) {
			fmt.Fprint(io.out, prompt)
			p, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(io.out)
			return p, err
		}
		return askTwice(read)
	}
	r := bufio.NewReader(io.in)
	read := func(prompt string) ([]byte, error) {
		fmt.Fprint(io.out, prompt)
		p, err := readLine(r)
		fmt.Fprintln(io.out)
		return p, err
	}
	return askTwice(read)
}

func askTwice(read func(prompt string) ([]byte, error)) ([]byte, error) {
	p1, err := read("Password: ")
	if err != nil {
		return nil, fmt.Errorf("reading password: %w", err)
	}
	if len(p1) == 0 {
		return nil, errors.New("empty password")
	}
	p2, err := read("Reenter password: ")
	defer clear(p2)
	if err != nil {
		clear(p1)
		return nil, fmt.Errorf("reading password: %w", err)
	}
	if string(p1) != string(p2) {
		clear(p1)
		return nil, errors.New("passwords do not match")
	}
	return p1, nil
}

// readLine reads one line without its "\n" or "\r\n", at most MaxPasswordLen bytes.
func readLine(r *bufio.Reader) ([]byte, error) {
	line := make([]byte, 0, 128)
	for {
		b, err := r.ReadByte()
		if err == io.EOF && len(line) > 0 {
			break
		}
		if err != nil {
			clear(line)
			return nil, err
		}
		if b == '\n' {
			break
		}
		if len(line) > passwd.MaxPasswordLen {
			clear(line)
			return nil, fmt.Errorf("password longer than %d bytes", passwd.MaxPasswordLen)
		}
		line = append(line, b)
	}
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}
