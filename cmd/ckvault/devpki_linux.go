package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The dev setup's PKI for the vault service: a CA, the service's
// certificate for localhost, and client certificates for a responder and
// an auditor (identity = subject CN). It is for a laptop only: the CA key
// sits next to the certificates.
const (
	devPKI          = "pki"
	devCAName       = "ca"
	devServerName   = "serve"
	devResponder    = "demo-responder"
	devAuditor      = "demo-auditor"
	devCertValidity = 365 * 24 * time.Hour
)

// devPKIFile is the path of name's certificate (".crt") or key (".key").
func devPKIFile(dir, name, ext string) string { return filepath.Join(dir, devPKI, name+ext) }

// setupDevPKI creates the dev PKI under dir/pki unless its CA exists, in
// which case everything is reused as it is.
func setupDevPKI(dir string) (created bool, err error) {
	if _, err := os.Lstat(devPKIFile(dir, devCAName, ".crt")); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	if err := os.MkdirAll(filepath.Join(dir, devPKI), 0o700); err != nil {
		return false, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return false, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "ckvault dev CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(devCertValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return false, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return false, err
	}
	leaves := []struct {
		name string
		tmpl x509.Certificate
	}{
		{devServerName, x509.Certificate{Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}},
		{devResponder, x509.Certificate{Subject: pkix.Name{CommonName: devResponder}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}},
		{devAuditor, x509.Certificate{Subject: pkix.Name{CommonName: devAuditor}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}},
	}
	for _, l := range leaves {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return false, err
		}
		t := l.tmpl
		t.SerialNumber, t.NotBefore, t.NotAfter = serial(), now.Add(-time.Hour), now.Add(devCertValidity)
		t.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, &t, ca, &key.PublicKey, caKey)
		if err != nil {
			return false, err
		}
		if err := writeDevPEM(devPKIFile(dir, l.name, ".key"), "PRIVATE KEY", mustPKCS8(key)); err != nil {
			return false, err
		}
		if err := writeDevPEM(devPKIFile(dir, l.name, ".crt"), "CERTIFICATE", der); err != nil {
			return false, err
		}
	}
	if err := writeDevPEM(devPKIFile(dir, devCAName, ".key"), "PRIVATE KEY", mustPKCS8(caKey)); err != nil {
		return false, err
	}
	// The CA certificate last: its presence says the set is complete.
	return true, writeDevPEM(devPKIFile(dir, devCAName, ".crt"), "CERTIFICATE", caDER)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func mustPKCS8(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err) // a P-256 key always marshals
	}
	return der
}

func writeDevPEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("dev: writing %s: %w", path, err)
	}
	return nil
}
