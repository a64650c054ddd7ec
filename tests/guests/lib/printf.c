/*
 * printf-like formatting: %s %c %d %i %u %x %X %p %% with l/ll/z length,
 * '0' and '-' flags and a width; %.Ns precision for strings.
 */
#include "probe.h"

struct out {
	char *buf;     /* NULL: console */
	size_t cap;
	size_t len;
};

static void out_c(struct out *o, char c)
{
	if (o->buf) {
		if (o->len + 1 < o->cap)
			o->buf[o->len] = c;
	} else {
		serial_putc(c);
	}
	o->len++;
}

static void out_pad(struct out *o, char c, int n)
{
	while (n-- > 0)
		out_c(o, c);
}

static void out_num(struct out *o, uint64_t v, unsigned base, bool neg, bool upper, int width, bool zero, bool left)
{
	char tmp[24];
	int n = 0;
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	do {
		uint32_t r;
		if (base == 16) {
			r = (uint32_t)v & 15;
			v >>= 4;
		} else {
			v = udiv64(v, base, &r);
		}
		tmp[n++] = digits[r];
	} while (v);
	int len = n + (neg ? 1 : 0);
	if (!left && !zero)
		out_pad(o, ' ', width - len);
	if (neg)
		out_c(o, '-');
	if (!left && zero)
		out_pad(o, '0', width - len);
	while (n)
		out_c(o, tmp[--n]);
	if (left)
		out_pad(o, ' ', width - len);
}

static int format(struct out *o, const char *fmt, va_list ap)
{
	for (const char *p = fmt; *p; p++) {
		if (*p != '%') {
			out_c(o, *p);
			continue;
		}
		p++;
		bool zero = false, left = false;
		for (;; p++) {
			if (*p == '0')
				zero = true;
			else if (*p == '-')
				left = true;
			else
				break;
		}
		int width = 0, prec = -1;
		while (*p >= '0' && *p <= '9')
			width = width * 10 + (*p++ - '0');
		if (*p == '.') {
			p++;
			prec = 0;
			if (*p == '*') {
				prec = va_arg(ap, int);
				p++;
			}
			while (*p >= '0' && *p <= '9')
				prec = prec * 10 + (*p++ - '0');
		}
		int lng = 0;
		while (*p == 'l') {
			lng++;
			p++;
		}
		if (*p == 'z')
			p++; /* size_t == unsigned int here */
		switch (*p) {
		case 'd':
		case 'i': {
			int64_t v = lng >= 2 ? va_arg(ap, long long) : lng == 1 ? va_arg(ap, long) : va_arg(ap, int);
			bool neg = v < 0;
			out_num(o, neg ? -(uint64_t)v : (uint64_t)v, 10, neg, false, width, zero, left);
			break;
		}
		case 'u':
		case 'x':
		case 'X': {
			uint64_t v = lng >= 2 ? va_arg(ap, unsigned long long)
				   : lng == 1 ? va_arg(ap, unsigned long)
					      : va_arg(ap, unsigned int);
			out_num(o, v, *p == 'u' ? 10 : 16, false, *p == 'X', width, zero, left);
			break;
		}
		case 'p':
			out_c(o, '0');
			out_c(o, 'x');
			out_num(o, (uintptr_t)va_arg(ap, void *), 16, false, false, width, zero, left);
			break;
		case 'c':
			out_c(o, (char)va_arg(ap, int));
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			int n = (int)(prec >= 0 ? strnlen(s, (size_t)prec) : strlen(s));
			if (!left)
				out_pad(o, ' ', width - n);
			for (int i = 0; i < n; i++)
				out_c(o, s[i]);
			if (left)
				out_pad(o, ' ', width - n);
			break;
		}
		case '%':
			out_c(o, '%');
			break;
		case '\0':
			p--;
			break;
		default:
			out_c(o, '%');
			out_c(o, *p);
			break;
		}
	}
	if (o->buf && o->cap)
		o->buf[o->len < o->cap ? o->len : o->cap - 1] = '\0';
	return (int)o->len;
}

int vprintf(const char *fmt, va_list ap)
{
	struct out o = { 0, 0, 0 };
	return format(&o, fmt, ap);
}

int printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vprintf(fmt, ap);
	va_end(ap);
	return n;
}

int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap)
{
	struct out o = { buf, n, 0 };
	return format(&o, fmt, ap);
}

int snprintf(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(buf, n, fmt, ap);
	va_end(ap);
	return r;
}

void print_sanitized(const char *s, size_t max)
{
	size_t i;
	for (i = 0; s[i] && i < max; i++) {
		char c = s[i];
		serial_putc(c >= 0x20 && c < 0x7f ? c : '?');
	}
	if (s[i])
		printf("...(truncated)");
}
