/* Kernel command line: space-separated `key=value` or bare `key` tokens. */
#include "probe.h"

const char *g_cmdline = "";

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

bool cmdline_find(const char *key, const char **val, size_t *len)
{
	size_t klen = strlen(key);
	bool found = false;
	const char *p = g_cmdline;
	while (*p) {
		while (*p && is_space(*p))
			p++;
		const char *tok = p;
		while (*p && !is_space(*p))
			p++;
		size_t tlen = (size_t)(p - tok);
		if (tlen >= klen && memcmp(tok, key, klen) == 0) {
			if (tlen == klen) {
				found = true;
				if (val)
					*val = tok + tlen;
				if (len)
					*len = 0;
			} else if (tok[klen] == '=') {
				found = true;
				if (val)
					*val = tok + klen + 1;
				if (len)
					*len = tlen - klen - 1;
			}
		}
	}
	return found;
}

bool cmdline_get(const char *key, char *buf, size_t bufsz)
{
	const char *v;
	size_t n;
	if (!cmdline_find(key, &v, &n))
		return false;
	if (bufsz == 0)
		return true;
	if (n >= bufsz)
		n = bufsz - 1;
	memcpy(buf, v, n);
	buf[n] = '\0';
	return true;
}

bool cmdline_get_u32(const char *key, uint32_t *out)
{
	const char *v;
	size_t n;
	return cmdline_find(key, &v, &n) && parse_u32(v, n, out);
}

bool cmdline_is(const char *key, const char *value)
{
	const char *v;
	size_t n;
	return cmdline_find(key, &v, &n) && n == strlen(value) && memcmp(v, value, n) == 0;
}
