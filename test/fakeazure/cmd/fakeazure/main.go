// Command fakeazure runs the Key Vault and Entra ID fake on loopback for a
// local cluster.
//
//	fakeazure --listen 127.0.0.1:8443 --ca-out ca.pem --seed seed.yaml \
//	  --jwks-file jwks.json --issuer https://kubernetes.default.svc
//
// With --ca-cert and --ca-key the server certificate is signed by that CA
// (it needs basicConstraints CA:TRUE), so a driver started before the fake,
// or a fake restarted under a running driver, is trusted all the same.
//
// Point the driver at it with --azure-vault-suffix <suffix>,
// --azure-vault-address <listen>, --azure-authority-host https://<listen>/
// and --azure-ca-file <ca-out>. For managed identity set IDENTITY_ENDPOINT
// and IDENTITY_HEADER in the driver's environment to the printed values.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/secretfs/secretfs/test/fakeazure"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8443", "loopback host:port to listen on")
	caOut := flag.String("ca-out", "", "write the CA certificate (PEM) that signs the server certificate to this file")
	caCert := flag.String("ca-cert", "", "CA certificate (PEM) that signs the server certificate (default: a new CA); needs --ca-key")
	caKey := flag.String("ca-key", "", "private key (PEM) of --ca-cert")
	seedFile := flag.String("seed", "", "YAML seed: clients, managed identities, vaults (see package fakeazure)")
	jwksFile := flag.String("jwks-file", "", "JSON Web Key Set that verifies client assertions")
	jwksURL := flag.String("jwks-url", "", "fetch the JWKS from this loopback URL instead (for example the apiserver's /openid/v1/jwks)")
	jwksCA := flag.String("jwks-ca-file", "", "CA bundle for --jwks-url")
	jwksToken := flag.String("jwks-token-file", "", "bearer token file for --jwks-url")
	issuer := flag.String("issuer", "https://kubernetes.default.svc", "required iss of client assertions")
	tenant := flag.String("tenant", fakeazure.DefaultTenantID, "tenant id")
	suffix := flag.String("vault-suffix", "vault.azure.test", "vault DNS suffix")
	identityHeader := flag.String("identity-header", "", "managed identity header secret (default random)")
	flag.Parse()

	cfg := fakeazure.Config{Addr: *listen, TenantID: *tenant, VaultSuffix: *suffix, Issuer: *issuer, IdentityHeader: *identityHeader}
	if (*caCert == "") != (*caKey == "") {
		log.Fatal("--ca-cert and --ca-key go together")
	}
	if *caCert != "" {
		ca, err := tls.LoadX509KeyPair(*caCert, *caKey)
		if err != nil {
			log.Fatalf("--ca-cert/--ca-key: %v", err)
		}
		cfg.CA = &ca
	}
	srv, err := fakeazure.Start(cfg)
	if err != nil {
		log.Fatal(err)
	}
	if *caOut != "" {
		if err := os.WriteFile(*caOut, srv.CACertPEM, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	if *seedFile != "" {
		data, err := os.ReadFile(*seedFile)
		if err != nil {
			log.Fatal(err)
		}
		if err := srv.LoadSeed(data); err != nil {
			log.Fatal(err)
		}
	}
	if *jwksFile != "" || *jwksURL != "" {
		jwks, err := readJWKS(*jwksFile, *jwksURL, *jwksCA, *jwksToken)
		if err != nil {
			log.Fatal(err)
		}
		if err := srv.SetJWKS(jwks); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Printf("fakeazure listening on %s\n", srv.URL)
	fmt.Printf("  authority host:    %s\n", srv.AuthorityHost())
	fmt.Printf("  vault suffix:      %s (vault hosts dial %s)\n", srv.VaultSuffix(), srv.Addr)
	fmt.Printf("  tenant:            %s\n", srv.TenantID())
	fmt.Printf("  IDENTITY_ENDPOINT: %s\n", srv.ManagedIdentityEndpoint())
	fmt.Printf("  IDENTITY_HEADER:   %s\n", srv.IdentityHeader())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	_ = srv.Close()
}

func readJWKS(file, rawURL, caFile, tokenFile string) ([]byte, error) {
	if file != "" {
		return os.ReadFile(file)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(u.Hostname()); u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, errors.New("--jwks-url must be a loopback URL")
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pemData, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
		}
		tlsCfg.RootCAs = pool
	}
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	if tokenFile != "" {
		tok, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+string(trimSpace(tok)))
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", rawURL, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
