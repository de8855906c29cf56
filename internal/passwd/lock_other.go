//go:build !unix

package passwd

import (
	"os"
	"time"
)

func lockFile(*os.File) error { return nil }

func lockShared(*os.File, time.Duration) error { return nil }
