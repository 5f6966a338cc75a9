// Package termsafe makes strings from archives, stores and logs safe to
// print on a terminal.
//
// A file name, a tar member name, an object key or an audit record field
// is chosen by whoever wrote the archive, the bucket or the request. Printed
// raw, an ESC sequence can clear or rewrite a line, a carriage return can
// hide what came before it, a C1 control (U+009B is CSI) acts as ESC '[' on
// terminals that honour it, and U+2028/U+2029 or a bidirectional override
// can break or reorder a row: each can forge or hide a row of a listing or
// an audit query. Every human-readable output of ckvault passes such
// strings through String; JSON output passes through JSON or Writer.
//
// # Escapes (String)
//
//	\\               a backslash, so no escape below can be forged
//	\t \n \r         tab, line feed, carriage return
//	\xNN             any other C0 control (U+0000–U+001F), DEL (U+007F),
//	                 or a byte that is not part of valid UTF-8 (0x80–0xFF)
//	\uNNNN           a C1 control (U+0080–U+009F), U+2028, U+2029, or a
//	                 bidirectional formatting character (U+061C, U+200E,
//	                 U+200F, U+202A–U+202E, U+2066–U+2069)
//
// Everything else is printed as it is. The mapping is injective (a \xNN
// below 0x80 is a control character, at or above it a stray byte), so an
// escaped string says exactly which bytes the original had.
package termsafe

import (
	"io"
	"unicode/utf8"
)

const hexDigits = "0123456789abcdef"

// escaped reports whether a (valid) rune is printed as an escape.
func escaped(r rune) bool {
	switch {
	case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r < 0x061c:
		return false
	}
	return bidiOrSeparator(r)
}

// bidiOrSeparator reports U+2028, U+2029 and the bidirectional formatting
// characters (Unicode's Bidi_Control property).
func bidiOrSeparator(r rune) bool {
	switch {
	case r == 0x061c, r == 0x200e, r == 0x200f, r == 0x2028, r == 0x2029:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		return true
	}
	return false
}

// String returns s with every character that could act on a terminal, and
// the backslash, escaped as described in the package documentation. A
// string that needs nothing is returned as it is, without allocating.
func String(s string) string {
	i := 0
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if c == '\\' || escaped(rune(c)) {
				break
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || escaped(r) {
			break
		}
		i += size
	}
	if i == len(s) {
		return s
	}
	b := make([]byte, 0, len(s)+16)
	b = append(b, s[:i]...)
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '\\':
				b = append(b, '\\', '\\')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case escaped(rune(c)):
				b = append(b, '\\', 'x', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, '\\', 'x', hexDigits[c>>4], hexDigits[c&0xf])
		case escaped(r):
			b = appendU(b, r)
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return string(b)
}

func appendU(b []byte, r rune) []byte {
	return append(b, '\\', 'u', hexDigits[r>>12&0xf], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
}

// JSON returns a JSON text with the characters encoding/json leaves raw
// but a terminal may act on — DEL, C1 controls and bidirectional
// formatting characters — replaced by their \uNNNN escapes. (encoding/json
// and log/slog already escape C0 controls, U+2028 and U+2029.) Outside
// strings JSON has only ASCII, so the result is the same JSON value. b must
// be valid UTF-8, as encoding/json's output is; b is returned unchanged
// when it needs nothing.
func JSON(b []byte) []byte {
	i := 0
	for i < len(b) {
		if b[i] < utf8.RuneSelf {
			if b[i] == 0x7f {
				break
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		if escaped(r) {
			break
		}
		i += size
	}
	if i == len(b) {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	out = append(out, b[:i]...)
	for i < len(b) {
		if b[i] < utf8.RuneSelf {
			if b[i] == 0x7f {
				out = appendU(out, 0x7f)
			} else {
				out = append(out, b[i])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		if escaped(r) {
			out = appendU(out, r)
		} else {
			out = append(out, b[i:i+size]...)
		}
		i += size
	}
	return out
}

// Writer returns a writer that passes each Write through JSON. Each Write
// must be whole JSON texts, as json.Encoder.Encode and log/slog's handlers
// guarantee (one Write per value or record), so no character is split
// between two writes.
func Writer(w io.Writer) io.Writer { return jsonWriter{w} }

type jsonWriter struct{ w io.Writer }

func (j jsonWriter) Write(p []byte) (int, error) {
	if _, err := j.w.Write(JSON(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}
