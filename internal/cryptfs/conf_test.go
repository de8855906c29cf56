package cryptfs

import (
	"strings"
	"testing"
)

const goodConf = `{
	"Creator": "gocryptfs v2.6.1",
	"EncryptedKey": "R/ktFyQcutHYAHevWOsd7asLrbpK5F1RE/qTM2z09wql3TvJhYEd/Md5bJ7rjZAKZNwyJ1CR8DmWut8sN37V9g==",
	"ScryptObject": {
		"Salt": "wcwreS2BZy/RUhLkTobH+ixE4U4hxa4RQEtRW5/HTFs=",
		"N": 1024,
		"R": 8,
		"P": 1,
		"KeyLen": 32
	},
	"Version": 2,
	"FeatureFlags": ["HKDF", "GCMIV128", "DirIV", "EMENames", "LongNames", "Raw64"]
}`

func TestCheckConf(t *testing.T) {
	tests := []struct {
		name string
		conf string
		says string // "" = valid
	}{
		{"valid", goodConf, ""},
		{"truncated", goodConf[:len(goodConf)/2], "not valid JSON"},
		{"empty", "", "not valid JSON"},
		{"no key", strings.Replace(goodConf, `"EncryptedKey"`, `"EncryptedKez"`, 1), "EncryptedKey missing"},
		{"bad base64", strings.Replace(goodConf, `"R/kt`, `"!!!!`, 1), "not valid JSON"},
		{"version 1", strings.Replace(goodConf, `"Version": 2`, `"Version": 1`, 1), "version 1"},
		{"N not a power of two", strings.Replace(goodConf, `"N": 1024`, `"N": 1000`, 1), "power of two"},
		{"N too small", strings.Replace(goodConf, `"N": 1024`, `"N": 512`, 1), "power of two"},
		{"keylen", strings.Replace(goodConf, `"KeyLen": 32`, `"KeyLen": 16`, 1), "keylen=16"},
		{"fido2", strings.Replace(goodConf, `"HKDF",`, `"HKDF", "FIDO2",`, 1), "FIDO2"},
		{"no salt", strings.Replace(goodConf, `"Salt"`, `"Pepper"`, 1), "salt"},
	}
	for _, tt := range tests {
		err := checkConf([]byte(tt.conf))
		switch {
		case tt.says == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.says != "" && (err == nil || !strings.Contains(err.Error(), tt.says)):
			t.Errorf("%s: err = %v, want it to say %q", tt.name, err, tt.says)
		}
	}
}

func FuzzCheckConf(f *testing.F) {
	f.Add([]byte(goodConf))
	f.Add([]byte(`{"Version":2,"EncryptedKey":"","ScryptObject":{"N":-1}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkConf(b) // must not panic
	})
}
