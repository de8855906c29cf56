package passwd

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Algorithm names accepted by Hash and by `moat passwd -H`, as mosquitto_passwd spells them.
const (
	AlgPBKDF2   = "sha512-pbkdf2" // $7$, the default
	AlgSHA512   = "sha512"        // $6$, mosquitto 1.6 and earlier
	AlgArgon2id = "argon2id"      // PHC string, mosquitto 2.1
)

// Defaults for newly written hashes. 210000 PBKDF2 iterations follows OWASP and
// mosquitto 2.1; the 12-byte salt keeps the entry readable by mosquitto 2.0.
const (
	DefaultIterations = 210000
	writeSaltLen      = 12
	argonTime         = 1
	argonMemoryKiB    = 47104
	argonThreads      = 1
	argonSaltLen      = 16
	argonKeyLen       = 32
)

// Bounds on what a hash string may ask for, so a file cannot make a single
// verification take minutes or gigabytes.
const (
	maxHashLen       = 512
	maxIterations    = 10_000_000
	maxArgonTime     = 64
	maxArgonMemory   = 1 << 20 // KiB, 1 GiB
	maxArgonThreads  = 16
	minArgonSaltLen  = 8
	maxArgonSaltLen  = 64
	minArgonKeyLen   = 16
	maxArgonKeyLen   = 128
	mosquittoHashLen = 64
)

type kind uint8

const (
	kindSHA512 kind = iota + 1
	kindPBKDF2
	kindArgon2id
)

// hashSpec is a decoded hash string.
type hashSpec struct {
	kind       kind
	iterations int    // $7$
	time       uint32 // argon2id t
	memory     uint32 // argon2id m, KiB
	threads    uint8  // argon2id p
	salt, sum  []byte
}

// params identifies the cost of a hash: entries with equal params cost the same to verify.
type params struct {
	kind            kind
	iterations      int
	time, memory    uint32
	threads         uint8
	saltLen, keyLen int
}

func (h *hashSpec) params() params {
	return params{h.kind, h.iterations, h.time, h.memory, h.threads, len(h.salt), len(h.sum)}
}

// cost is a rough relative price of one verification, used to pick the dummy hash.
func (p params) cost() int64 {
	switch p.kind {
	case kindPBKDF2:
		return int64(p.iterations) * 2
	case kindArgon2id:
		return int64(p.time) * int64(p.memory) * 8
	}
	return 1
}

var (
	errNotHash     = errors.New("not a password hash (a plaintext password? convert the file with `moat passwd -U`)")
	errUnsupported = errors.New("unsupported hash type (want $6$, $7$ or $argon2id$)")
)

// parseHash decodes a hash string. Its errors never quote the input.
func parseHash(s string) (*hashSpec, error) {
	if len(s) > maxHashLen {
		return nil, fmt.Errorf("hash longer than %d bytes", maxHashLen)
	}
	if !strings.HasPrefix(s, "$") {
		return nil, errNotHash
	}
	f := strings.Split(s[1:], "$")
	switch f[0] {
	case "6":
		if len(f) != 3 {
			return nil, errors.New("malformed $6$ hash (want $6$salt$hash)")
		}
		return decodeMosquitto(&hashSpec{kind: kindSHA512}, f[1], f[2])
	case "7":
		if len(f) != 4 {
			return nil, errors.New("malformed $7$ hash (want $7$iterations$salt$hash)")
		}
		n, err := parseDecimal(f[1])
		if err != nil || n < 1 || n > maxIterations {
			return nil, fmt.Errorf("$7$ iteration count must be 1..%d", maxIterations)
		}
		return decodeMosquitto(&hashSpec{kind: kindPBKDF2, iterations: n}, f[2], f[3])
	case "argon2id":
		return parseArgon2id(f[1:])
	}
	return nil, errUnsupported
}

// parseDecimal accepts plain ASCII digits only (no sign, no spaces).
func parseDecimal(s string) (int, error) {
	if s == "" || len(s) > 10 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errors.New("not a decimal number")
	}
	return strconv.Atoi(s)
}

func decodeMosquitto(h *hashSpec, salt, sum string) (*hashSpec, error) {
	var err error
	if h.salt, err = base64.StdEncoding.Strict().DecodeString(salt); err != nil {
		return nil, errors.New("salt is not valid base64")
	}
	if len(h.salt) != 12 && len(h.salt) != 64 {
		return nil, fmt.Errorf("salt is %d bytes, want 12 or 64", len(h.salt))
	}
	if h.sum, err = base64.StdEncoding.Strict().DecodeString(sum); err != nil {
		return nil, errors.New("hash is not valid base64")
	}
	if len(h.sum) != mosquittoHashLen {
		return nil, fmt.Errorf("hash is %d bytes, want %d", len(h.sum), mosquittoHashLen)
	}
	return h, nil
}

// parseArgon2id reads the fields after "$argon2id$": v=19, m=..,t=..,p=.., salt, hash.
func parseArgon2id(f []string) (*hashSpec, error) {
	malformed := errors.New("malformed $argon2id$ hash (want $argon2id$v=19$m=M,t=T,p=P$salt$hash)")
	if len(f) != 4 || f[0] != "v=19" {
		return nil, malformed
	}
	kv := strings.Split(f[1], ",")
	if len(kv) != 3 {
		return nil, malformed
	}
	var vals [3]int
	for i, name := range []string{"m=", "t=", "p="} {
		v, ok := strings.CutPrefix(kv[i], name)
		if !ok {
			return nil, malformed
		}
		n, err := parseDecimal(v)
		if err != nil {
			return nil, malformed
		}
		vals[i] = n
	}
	m, t, p := vals[0], vals[1], vals[2]
	switch {
	case t < 1 || t > maxArgonTime:
		return nil, fmt.Errorf("argon2id t must be 1..%d", maxArgonTime)
	case p < 1 || p > maxArgonThreads:
		return nil, fmt.Errorf("argon2id p must be 1..%d", maxArgonThreads)
	case m < 8*p || m > maxArgonMemory:
		return nil, fmt.Errorf("argon2id m must be 8*p..%d KiB", maxArgonMemory)
	}
	h := &hashSpec{kind: kindArgon2id, time: uint32(t), memory: uint32(m), threads: uint8(p)}
	var err error
	// PHC strings use unpadded base64; tolerate padding written by other tools.
	if h.salt, err = base64.RawStdEncoding.Strict().DecodeString(strings.TrimRight(f[2], "=")); err != nil {
		return nil, errors.New("argon2id salt is not valid base64")
	}
	if len(h.salt) < minArgonSaltLen || len(h.salt) > maxArgonSaltLen {
		return nil, fmt.Errorf("argon2id salt is %d bytes, want %d..%d", len(h.salt), minArgonSaltLen, maxArgonSaltLen)
	}
	if h.sum, err = base64.RawStdEncoding.Strict().DecodeString(strings.TrimRight(f[3], "=")); err != nil {
		return nil, errors.New("argon2id hash is not valid base64")
	}
	if len(h.sum) < minArgonKeyLen || len(h.sum) > maxArgonKeyLen {
		return nil, fmt.Errorf("argon2id hash is %d bytes, want %d..%d", len(h.sum), minArgonKeyLen, maxArgonKeyLen)
	}
	return h, nil
}

// compute derives the hash of password with h's parameters and salt.
func (h *hashSpec) compute(password []byte) []byte {
	switch h.kind {
	case kindSHA512:
		d := sha512.New()
		d.Write(password)
		d.Write(h.salt)
		return d.Sum(nil)
	case kindPBKDF2:
		k, err := pbkdf2.Key(sha512.New, string(password), h.salt, h.iterations, len(h.sum))
		if err != nil { // only for out-of-range lengths, which parseHash excludes
			return nil
		}
		return k
	case kindArgon2id:
		return argon2.IDKey(password, h.salt, h.time, h.memory, h.threads, uint32(len(h.sum)))
	}
	return nil
}

// verify reports whether password matches, comparing in constant time.
func (h *hashSpec) verify(password []byte) bool {
	got := h.compute(password)
	return len(got) == len(h.sum) && subtle.ConstantTimeCompare(got, h.sum) == 1
}

// String encodes h the way mosquitto writes it.
func (h *hashSpec) String() string {
	b64 := base64.StdEncoding.EncodeToString
	switch h.kind {
	case kindSHA512:
		return "$6$" + b64(h.salt) + "$" + b64(h.sum)
	case kindPBKDF2:
		return "$7$" + strconv.Itoa(h.iterations) + "$" + b64(h.salt) + "$" + b64(h.sum)
	case kindArgon2id:
		raw := base64.RawStdEncoding.EncodeToString
		return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", h.memory, h.time, h.threads, raw(h.salt), raw(h.sum))
	}
	return ""
}

// Hash returns a new hash string for password. alg is AlgPBKDF2 (also when
// empty), AlgSHA512 or AlgArgon2id. iterations <= 0 means the default: the
// PBKDF2 iteration count for $7$, the time cost t for argon2id; $6$ has none.
func Hash(password []byte, alg string, iterations int) (string, error) {
	h, err := newSpec(alg, iterations)
	if err != nil {
		return "", err
	}
	if _, err := rand.Read(h.salt); err != nil {
		return "", fmt.Errorf("passwd: salt: %w", err)
	}
	h.sum = h.compute(password)
	if h.sum == nil {
		return "", errors.New("passwd: hashing failed")
	}
	return h.String(), nil
}

// newSpec returns the parameters Hash writes, with a zero salt of the right size.
func newSpec(alg string, iterations int) (*hashSpec, error) {
	if iterations > maxIterations {
		return nil, fmt.Errorf("passwd: iterations must be at most %d", maxIterations)
	}
	switch alg {
	case "", AlgPBKDF2:
		h := &hashSpec{kind: kindPBKDF2, iterations: DefaultIterations, salt: make([]byte, writeSaltLen), sum: make([]byte, mosquittoHashLen)}
		if iterations > 0 {
			h.iterations = iterations
		}
		return h, nil
	case AlgSHA512:
		return &hashSpec{kind: kindSHA512, salt: make([]byte, writeSaltLen), sum: make([]byte, mosquittoHashLen)}, nil
	case AlgArgon2id:
		if iterations > maxArgonTime {
			return nil, fmt.Errorf("passwd: argon2id time cost must be at most %d", maxArgonTime)
		}
		h := &hashSpec{kind: kindArgon2id, time: argonTime, memory: argonMemoryKiB, threads: argonThreads,
			salt: make([]byte, argonSaltLen), sum: make([]byte, argonKeyLen)}
		if iterations > 0 {
			h.time = uint32(iterations)
		}
		return h, nil
	}
	return nil, fmt.Errorf("passwd: unknown hash algorithm %q (want %s, %s or %s)", alg, AlgPBKDF2, AlgSHA512, AlgArgon2id)
}

// dummyFor returns a hash with parameters p whose salt and sum are random, so
// verifying any password against it costs what a real entry costs and fails.
func dummyFor(p params) *hashSpec {
	h := &hashSpec{kind: p.kind, iterations: p.iterations, time: p.time, memory: p.memory, threads: p.threads,
		salt: make([]byte, p.saltLen), sum: make([]byte, p.keyLen)}
	rand.Read(h.salt) // crypto/rand.Read never fails on supported platforms
	rand.Read(h.sum)
	return h
}

func defaultParams() params {
	return params{kind: kindPBKDF2, iterations: DefaultIterations, saltLen: writeSaltLen, keyLen: mosquittoHashLen}
}
