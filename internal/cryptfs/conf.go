package cryptfs

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
)

// maxConfSize bounds the read of gocryptfs.conf (a real one is ~400 bytes).
const maxConfSize = 64 << 10

// confFile holds the gocryptfs.conf fields checked before mounting
// (internal/configfile in gocryptfs; []byte fields are base64 in JSON).
type confFile struct {
	EncryptedKey []byte
	ScryptObject struct {
		Salt   []byte
		N      int
		R      int
		P      int
		KeyLen int
	}
	Version      int
	FeatureFlags []string
}

// checkConf sanity-checks gocryptfs.conf, so that a damaged file is
// reported as such rather than by a gocryptfs panic or a generic exit code.
func checkConf(b []byte) error {
	var c confFile
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("not valid JSON: %w", err)
	}
	switch {
	case c.Version != 2:
		return fmt.Errorf("unsupported on-disk format version %d", c.Version)
	case len(c.EncryptedKey) < 48:
		return fmt.Errorf("EncryptedKey missing or short (%d bytes)", len(c.EncryptedKey))
	case len(c.ScryptObject.Salt) < 32:
		return fmt.Errorf("scrypt salt missing or short (%d bytes)", len(c.ScryptObject.Salt))
	case c.ScryptObject.N < 1<<10 || c.ScryptObject.N&(c.ScryptObject.N-1) != 0:
		return fmt.Errorf("scrypt N %d is not a power of two >= 1024", c.ScryptObject.N)
	case c.ScryptObject.R < 8 || c.ScryptObject.P < 1 || c.ScryptObject.KeyLen != 32:
		return fmt.Errorf("bad scrypt parameters r=%d p=%d keylen=%d", c.ScryptObject.R, c.ScryptObject.P, c.ScryptObject.KeyLen)
	case slices.Contains(c.FeatureFlags, "FIDO2"):
		return fmt.Errorf("volume is locked with a FIDO2 token, which Moat cannot use")
	}
	return nil
}

// readConf reads and checks CIPHERDIR/gocryptfs.conf.
func readConf(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfSize+1))
	if err != nil {
		return err
	}
	if len(b) > maxConfSize {
		return fmt.Errorf("larger than %d bytes", maxConfSize)
	}
	return checkConf(b)
}
