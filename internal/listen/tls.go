package listen

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
)

// hardenedSuites are the TLS 1.2 suites offered: ECDHE key exchange with an
// AEAD only. TLS 1.3 suites are not configurable and are all AEAD.
var hardenedSuites = [...]uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// keyExchangeGroups are the key exchanges offered: X25519 and P-256, which
// every MQTT device stack (mbedTLS, wolfSSL, OpenSSL, Go) speaks, and
// P-384 for stacks configured for it. Go would otherwise pick the hybrid
// post-quantum groups (X25519MLKEM768...) whenever a client offers them,
// each costing more broker CPU per handshake and a larger handshake;
// device telemetry on a broker that handles reconnect storms is better
// served by the cheaper groups. (Go ignores the order here: it is a set.)
var keyExchangeGroups = [...]tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384}

// HardenedTLS returns a server configuration for MQTT/WSS listeners.
// getCert supplies certificates per handshake so they can be replaced without
// a restart. minVersion takes mosquitto's tls_version values as a minimum:
// "" or "tlsv1.2" (TLS 1.2 and 1.3), "tlsv1.3"; "tlsv1" and "tlsv1.1" are
// refused as insecure.
func HardenedTLS(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), minVersion string) (*tls.Config, error) {
	if getCert == nil {
		return nil, errors.New("tls: no certificate source")
	}
	var v uint16
	switch strings.ToLower(strings.TrimSpace(minVersion)) {
	case "", "tlsv1.2":
		v = tls.VersionTLS12
	case "tlsv1.3":
		v = tls.VersionTLS13
	case "tlsv1", "tlsv1.0", "tlsv1.1":
		return nil, fmt.Errorf("tls_version %q: TLS 1.0 and 1.1 are not supported, use tlsv1.2 or tlsv1.3", minVersion)
	default:
		return nil, fmt.Errorf("tls_version %q: want tlsv1.2 or tlsv1.3", minVersion)
	}
	return &tls.Config{
		MinVersion:       v,
		CipherSuites:     hardenedSuites[:],
		CurvePreferences: keyExchangeGroups[:],
		GetCertificate:   getCert,
	}, nil
}
