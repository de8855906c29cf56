package e2e

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/moat-mqtt/moat/internal/moattest"
	"github.com/moat-mqtt/moat/internal/testenv"
)

// haTestCert writes a CA-signed server certificate for 127.0.0.1 and
// localhost, its key and the CA into dir and returns the files, the CA pool
// and the base64
// SHA-256 of the certificate's SubjectPublicKeyInfo (Chromium's
// --ignore-certificate-errors-spki-list format).
func haTestCert(t *testing.T, dir string) (certFile, keyFile, caFile string, pool *x509.CertPool, spki string) {
	t.Helper()
	ca := moattest.NewCA(t)
	certFile, keyFile, caFile = ca.WriteFiles(t, dir, "server", "localhost", "127.0.0.1", "::1")
	data, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return certFile, keyFile, caFile, ca.Pool(), base64.StdEncoding.EncodeToString(sum[:])
}

// haPageServer serves the test page and MQTT.js's browser bundle, and holds
// /wait (and so the page's load event) until the page posts to /done.
// arm starts a new page load; loads are sequential.
type haPageServer struct {
	*httptest.Server
	mu     sync.Mutex
	done   chan struct{}
	result string
}

func haNewPageServer(t *testing.T, page, bundle []byte) *haPageServer {
	t.Helper()
	s := &haPageServer{}
	s.arm()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /page", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(page)
	})
	mux.HandleFunc("GET /mqtt.min.js", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		_, _ = w.Write(bundle)
	})
	mux.HandleFunc("POST /done", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		s.mu.Lock()
		select {
		case <-s.done:
		default:
			s.result = string(b)
			close(s.done)
		}
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /wait", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		done := s.done
		s.mu.Unlock()
		select {
		case <-done:
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /favicon.ico", http.NotFound)
	// httptest listens on 127.0.0.1.
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func (s *haPageServer) arm() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done, s.result = make(chan struct{}), ""
}

func (s *haPageServer) posted() (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return s.result, true
	default:
		return "", false
	}
}

// haResult is the text of the page's #result element in a dumped DOM.
func haResult(t *testing.T, dom string) string {
	t.Helper()
	const open = `<pre id="result">`
	i := strings.Index(dom, open)
	j := strings.Index(dom[max(i, 0):], "</pre>")
	if i < 0 || j < 0 {
		t.Fatalf("no #result in the DOM:\n%s", dom)
	}
	return html.UnescapeString(dom[i+len(open) : i+j])
}

// haChromium runs headless Chromium on url and returns the DOM it dumps
// after the load event.
// An empty spki trusts nothing beyond the system's CAs.
func haChromium(t *testing.T, chromium, spki, pageURL string) string {
	t.Helper()
	args := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir=" + t.TempDir(),
	}
	if spki != "" {
		// Trust exactly the test certificate, not every certificate.
		args = append(args, "--ignore-certificate-errors-spki-list="+spki)
	}
	out, stderr, err := RunCommand(t, 60*time.Second, nil, chromium, append(args, "--dump-dom", pageURL)...)
	if err != nil {
		t.Fatalf("chromium: %v\nstdout:\n%s\nstderr:\n%s", err, out, tailBytes(stderr, 4000))
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("chromium stderr:\n%s", tailBytes(stderr, 2000))
	}
	return string(out)
}

// TestBrowserMQTTjsOverWSS loads MQTT.js's browser bundle in headless
// Chromium, connects it to Moat over WSS (a test CA's certificate, pinned
// for Chromium by its SPKI hash) and checks it receives a retained message
// and its own publish, and that a page from another origin is refused.
func TestBrowserMQTTjsOverWSS(t *testing.T) {
	chromium := "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		testenv.Missing(t, "chromium", "apt-get install chromium")
	}
	root := RepoRoot(t)
	bundle, err := os.ReadFile(filepath.Join(root, "internal/e2e/browser/node_modules/mqtt/dist/mqtt.min.js"))
	if err != nil {
		testenv.Missing(t, "MQTT.js", "make test installs it (npm ci in internal/e2e/browser)")
	}
	page, err := os.ReadFile(filepath.Join(root, "internal/e2e/testdata/mqtt_page.html"))
	if err != nil {
		t.Fatal(err)
	}

	allowed := haNewPageServer(t, page, bundle)
	other := haNewPageServer(t, page, bundle)

	h := startHAHouse(t, "websockets_origin "+allowed.URL+"\n")
	moat, mqttPort, wssPort, pool, spki := h.moat, h.port, h.wssPort, h.pool, h.spki
	wssURL := fmt.Sprintf("wss://127.0.0.1:%d/", wssPort)
	const user, pass = "alice", "alice-demo-pike-15"

	t.Run("origin checked at upgrade", func(t *testing.T) {
		d := websocket.Dialer{
			TLSClientConfig:  &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"},
			Subprotocols:     []string{"mqtt"},
			HandshakeTimeout: 10 * time.Second,
		}
		for _, tc := range []struct {
			origin string
			want   int
		}{
			{allowed.URL, http.StatusSwitchingProtocols},
			{other.URL, http.StatusForbidden},
		} {
			c, resp, err := d.Dial(wssURL, http.Header{"Origin": {tc.origin}})
			if c != nil {
				if got := c.Subprotocol(); got != "mqtt" {
					t.Errorf("subprotocol %q, want mqtt", got)
				}
				c.Close()
			}
			if resp == nil {
				t.Fatalf("origin %s: no HTTP answer: %v", tc.origin, err)
			}
			if resp.StatusCode != tc.want {
				t.Errorf("origin %s: HTTP %d, want %d", tc.origin, resp.StatusCode, tc.want)
			}
		}
	})

	// A plain MQTT client on the other listener: it leaves a retained
	// greeting for the page and must receive the page's reply.
	topic := "alice/browser/" + fmt.Sprint(time.Now().UnixNano())
	greeting, reply := "hello browser from paho", "hello Moat from MQTT.js"
	replies := make(chan string, 4)
	opts := paho.NewClientOptions().AddBroker("tcp://" + Loopback(mqttPort)).
		SetClientID("alice-go").SetUsername(user).SetPassword(pass).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second)
	gc := paho.NewClient(opts)
	if tok := gc.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("paho connect: %v", tok.Error())
	}
	t.Cleanup(func() { gc.Disconnect(250) })
	if tok := gc.Subscribe(topic+"/reply", 1, func(_ paho.Client, m paho.Message) {
		select {
		case replies <- string(m.Payload()):
		default:
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("paho subscribe: %v", tok.Error())
	}
	if tok := gc.Publish(topic+"/greeting", 1, true, greeting); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("paho publish: %v", tok.Error())
	}

	pageURL := func(base, id string) string {
		q := url.Values{"url": {wssURL}, "user": {user}, "pass": {pass}, "id": {id}, "topic": {topic}, "reply": {reply}}
		return base + "/page?" + q.Encode()
	}

	t.Run("allowed origin", func(t *testing.T) {
		start := time.Now()
		dom := haResult(t, haChromium(t, chromium, spki, pageURL(allowed.URL, "alice-browser")))
		t.Logf("#result:\n%s", dom)
		t.Logf("page loaded, talked MQTT over WSS and dumped its DOM in %s", time.Since(start).Round(time.Millisecond))
		for _, want := range []string{
			"connected",
			"granted " + topic + "/# qos=1",
			"received " + topic + "/greeting retain=true: " + greeting,
			"received " + topic + "/reply retain=false: " + reply,
			"done",
		} {
			if !strings.Contains(dom, want) {
				t.Errorf("DOM lacks %q:\n%s", want, dom)
			}
		}
		if res, ok := allowed.posted(); !ok || !strings.HasSuffix(res, "done") {
			t.Errorf("page posted %q (posted=%v)", res, ok)
		}
		select {
		case got := <-replies:
			if got != reply {
				t.Errorf("paho received %q, want %q", got, reply)
			}
		case <-time.After(10 * time.Second):
			t.Error("the page's publish never reached the plain MQTT client")
		}
	})

	t.Run("other origin refused", func(t *testing.T) {
		dom := haResult(t, haChromium(t, chromium, spki, pageURL(other.URL, "alice-browser-2")))
		t.Logf("#result:\n%s", dom)
		if !strings.HasPrefix(dom, "failed:") {
			t.Errorf("a page from %s talked to Moat:\n%s", other.URL, dom)
		}
		if _, ok := other.posted(); !ok {
			t.Error("the page never reported its failure")
		}
	})

	t.Run("untrusted certificate refused", func(t *testing.T) {
		allowed.arm()
		dom := haResult(t, haChromium(t, chromium, "", pageURL(allowed.URL, "alice-browser-3")))
		t.Logf("#result:\n%s", dom)
		if _, ok := allowed.posted(); !ok {
			t.Error("the page never reported its failure")
		}
		if !strings.HasPrefix(dom, "failed:") {
			t.Errorf("the page connected without trusting the test certificate:\n%s", dom)
		}
	})

	if strings.Contains(moat.Output(), pass) {
		t.Error("Moat's log holds the password")
	}
}
