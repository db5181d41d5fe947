/*
 * text.c
 *		Texts kept in shared memory or relayed between processes: their one
 *		canonical form, how a writer makes it, and how a reader renders it in
 *		its own database's encoding.  The rules, for every such text (query
 *		texts, error messages and the 'E' records that carry them, command
 *		statuses, the redacted conninfo and the text settings in the
 *		registry):
 *
 *	- Stored and relayed texts are valid UTF-8, whatever their source wrote.
 *	  The writer converts: a text from a foreign server (client_encoding
 *	  UTF8, but untrusted) or from a backend has each byte that does not
 *	  begin a valid UTF-8 character replaced by the four characters \xNN
 *	  (lower-case hex); a text in a database's encoding is converted to UTF-8
 *	  (a SQL_ASCII database's bytes are taken as UTF-8, escaped where they
 *	  are not).  Nothing is dropped.
 *	- A text cut to fit its room is cut between two characters (never inside
 *	  an escape) and ends with DBPOOL_TEXT_CUT_MARK ("...").
 *	- A reader renders a stored text into its database's encoding without
 *	  ever failing: a character that encoding lacks becomes \uXXXX, or
 *	  \UXXXXXXXX above U+FFFF (PostgreSQL's escape-string forms).  A
 *	  SQL_ASCII database gets the UTF-8 bytes.
 *	- Backslashes already in a text are kept as they are, so "\xff" in a
 *	  rendered text is either those four characters or an escaped byte.
 *
 * Conversions between UTF-8 and an encoding other than SQL_ASCII look their
 * conversion function up in the catalogs: they need a transaction.  A
 * rendering outside one (the worker's log lines) escapes what is beyond
 * ASCII instead.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"

#include "dbpool.h"

static const char hexdigits[] = "0123456789abcdef";

/* Bytes of the valid UTF-8 character at p (before end), or 0 if none begins there. */
static inline int
utf8_char_len(const char *p, const char *end)
{
	if (!IS_HIGHBIT_SET(*p))
		return *p != '\0' ? 1 : 0;
	return Max(pg_encoding_verifymbchar(PG_UTF8, p, end - p), 0);
}

/*
 * Whether an escaped byte, \xNN as written here, begins at p (before end):
 * a text made canonical once (an 'E' record's message) may be stored again,
 * and a cut must not split its escapes.  A text that held those four
 * characters from the start is not cut inside them either, which changes
 * nothing else.
 */
static inline bool
is_byte_escape(const char *p, const char *end)
{
	return end - p >= 4 && p[0] == '\\' && p[1] == 'x' &&
		((p[2] >= '0' && p[2] <= '9') || (p[2] >= 'a' && p[2] <= 'f')) &&
		((p[3] >= '0' && p[3] <= '9') || (p[3] >= 'a' && p[3] <= 'f'));
}

/* Write the escape of one byte, \xNN, at out (4 bytes). */
static inline void
byte_escape(char *out, unsigned char b)
{
	out[0] = '\\';
	out[1] = 'x';
	out[2] = hexdigits[b >> 4];
	out[3] = hexdigits[b & 0xf];
}

/* Append text, len bytes meant as UTF-8, with every invalid byte escaped. */
static void
append_utf8_escaped(StringInfo out, const char *text, int len)
{
	const char *p = text;
	const char *end = text + len;

	while (p < end)
	{
		int			n = utf8_char_len(p, end);

		if (n > 0)
		{
			appendBinaryStringInfo(out, p, n);
			p += n;
		}
		else
		{
			char		esc[4];

			byte_escape(esc, (unsigned char) *p++);
			appendBinaryStringInfo(out, esc, 4);
		}
	}
}

/*
 * Append len bytes at text, in src_enc, converted to dst_enc by the
 * conversion function proc (InvalidOid: none; only ASCII passes).  What does
 * not convert is escaped: a valid UTF-8 character (src_enc UTF-8) as \u or
 * \U and its code point, any other byte as \xNN.
 */
static void
append_converted(StringInfo out, const char *text, int len, int src_enc, int dst_enc, Oid proc)
{
	const char *p = text;
	const char *end = text + len;
	unsigned char *buf = NULL;

	while (p < end)
	{
		int			n;

		if (OidIsValid(proc))
		{
			int			done;

			/* room for the worst growth of the rest; the first call's rest is the longest */
			if (buf == NULL)
				buf = MemoryContextAllocHuge(CurrentMemoryContext,
											 (Size) (end - p) * MAX_CONVERSION_GROWTH + 1);
			done = pg_do_encoding_conversion_buf(proc, src_enc, dst_enc,
												 (unsigned char *) p, end - p,
												 buf, (end - p) * MAX_CONVERSION_GROWTH + 1,
												 true);
			appendStringInfoString(out, (char *) buf);
			p += done;
			if (p >= end)
				break;
		}
		else if (!IS_HIGHBIT_SET(*p) && *p != '\0')
		{
			appendStringInfoChar(out, *p++);
			continue;
		}

		/* *p did not convert */
		n = src_enc == PG_UTF8 ? utf8_char_len(p, end) : 0;
		if (n > 0)
		{
			pg_wchar	c = utf8_to_unicode((const unsigned char *) p);

			if (c > 0xFFFF)
				appendStringInfo(out, "\\U%08x", (unsigned int) c);
			else
				appendStringInfo(out, "\\u%04x", (unsigned int) c);
			p += n;
		}
		else
		{
			char		esc[4];

			byte_escape(esc, (unsigned char) *p++);
			appendBinaryStringInfo(out, esc, 4);
		}
	}
	if (buf)
		pfree(buf);
}

/*
 * The canonical form (valid UTF-8) of len bytes of text in encoding: PG_UTF8
 * for what foreign servers send, GetDatabaseEncoding() for a text of this
 * database.  Returns text itself when it is already canonical, else a
 * palloc'd copy.  Never fails; other encodings than UTF-8 and SQL_ASCII need
 * a transaction.
 */
char *
DbpoolTextUtf8(const char *text, int len, int encoding)
{
	StringInfoData out;

	if (text == NULL)
		return NULL;
	if (encoding == PG_UTF8 || encoding == PG_SQL_ASCII)
	{
		if (pg_verify_mbstr(PG_UTF8, text, len, true))
			return unconstify(char *, text);
		initStringInfo(&out);
		append_utf8_escaped(&out, text, len);
		return out.data;
	}
	initStringInfo(&out);
	append_converted(&out, text, len, encoding, PG_UTF8,
					 FindDefaultConversionProc(encoding, PG_UTF8));
	return out.data;
}

/*
 * Store text (len bytes, UTF-8 or meant to be) in dst, a room of size bytes,
 * in the canonical form: invalid bytes escaped, and if it does not fit, cut
 * between two characters (or escapes) with DBPOOL_TEXT_CUT_MARK at the end.
 * Allocates nothing: the worker calls it for every request.
 */
void
DbpoolTextStore(char *dst, Size size, const char *text, int len)
{
	const Size	marklen = strlen(DBPOOL_TEXT_CUT_MARK);
	const Size	room = size - 1;
	const Size	keep = room - marklen;	/* where a cut text may end */
	const char *p = text;
	const char *end = text + len;
	Size		used = 0;
	Size		cut = 0;		/* the last boundary within keep */

	Assert(size > marklen + 1);
	while (p < end)
	{
		int			n = is_byte_escape(p, end) ? 4 : utf8_char_len(p, end);
		int			width = n > 0 ? n : 4;

		if (used + width > room)
		{
			memcpy(dst + cut, DBPOOL_TEXT_CUT_MARK, marklen);
			used = cut + marklen;
			break;
		}
		if (n > 0)
		{
			memcpy(dst + used, p, n);
			p += n;
		}
		else
			byte_escape(dst + used, (unsigned char) *p++);
		used += width;
		if (used <= keep)
			cut = used;
	}
	dst[used] = '\0';
}

/*
 * A stored text (len bytes of UTF-8) in the current database's encoding,
 * palloc'd: what the encoding lacks as \uXXXX, an invalid byte (none should
 * be stored) as \xNN.  Never fails for the text's sake.  Outside a
 * transaction (the worker's log lines) the conversion function cannot be
 * looked up: every character beyond ASCII is then escaped.
 */
char *
DbpoolTextRender(const char *utf8, int len)
{
	int			enc = GetDatabaseEncoding();
	bool		valid = pg_verify_mbstr(PG_UTF8, utf8, len, true);
	StringInfoData out;

	if (valid)
	{
		const char *p;

		if (enc == PG_UTF8 || enc == PG_SQL_ASCII)
			return pnstrdup(utf8, len);
		for (p = utf8; p < utf8 + len && !IS_HIGHBIT_SET(*p); p++)
			;
		if (p == utf8 + len)	/* ASCII is the same in every server encoding */
			return pnstrdup(utf8, len);
	}
	initStringInfo(&out);
	if (enc == PG_UTF8 || enc == PG_SQL_ASCII)
		append_utf8_escaped(&out, utf8, len);
	else
		append_converted(&out, utf8, len, PG_UTF8, enc,
						 IsTransactionState() ? FindDefaultConversionProc(PG_UTF8, enc) : InvalidOid);
	return out.data;
}

/* DbpoolTextRender of a NUL-terminated stored text; NULL stays NULL. */
char *
DbpoolTextShow(const char *utf8)
{
	return utf8 ? DbpoolTextRender(utf8, strlen(utf8)) : NULL;
}
