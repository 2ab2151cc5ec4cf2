/* Subject and pattern validation over UTF-8 bytes.
 *
 * A subject is one or more dot-separated tokens. Tokens are non-empty and
 * contain no whitespace or control characters: ASCII ones, C1 controls
 * (U+0080..U+009F) and the Unicode spaces (U+00A0, U+1680, U+2000..U+200A,
 * U+2028, U+2029, U+202F, U+205F, U+3000) -- everything str.isspace() knows. In a pattern, a token
 * that is exactly "*" matches one token and a final token that is exactly
 * ">" matches one or more trailing tokens; in a published subject neither
 * '*' nor '>' may form a token. One pass, no allocation.
 */
#ifndef RC_SUBJECT_H
#define RC_SUBJECT_H

#include <stddef.h>

#define RC_SUBJECT_MAX_LEN 1024

enum rc_subject_status {
    RC_SUBJECT_OK = 0,
    RC_SUBJECT_EMPTY = 1,          /* zero length */
    RC_SUBJECT_TOO_LONG = 2,       /* over RC_SUBJECT_MAX_LEN bytes */
    RC_SUBJECT_EMPTY_TOKEN = 3,    /* "a..b", ".a", "a." */
    RC_SUBJECT_BAD_CHAR = 4,       /* whitespace or control byte */
    RC_SUBJECT_WILDCARD = 5,       /* wildcard token in a publish subject */
    RC_SUBJECT_GT_NOT_LAST = 6     /* ">" before the last token of a pattern */
};

/* Is the (valid UTF-8) sequence at s, with lead byte >= 0x80, a Unicode
 * space or C1 control? Stores its length in *len. */
static inline int rc_utf8_is_space(const unsigned char *s, size_t left, size_t *len)
{
    unsigned int cp;
    unsigned char c = s[0];
    if (c < 0xE0) {
        *len = 2;
        if (left < 2)
            return 1;
        cp = ((unsigned int)(c & 0x1F) << 6) | (s[1] & 0x3F);
        return cp >= 0x80 && cp <= 0xA0;
    }
    if (c < 0xF0) {
        *len = 3;
        if (left < 3)
            return 1;
        cp = ((unsigned int)(c & 0x0F) << 12) | ((unsigned int)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
               cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
    }
    *len = 4;
    return left < 4;
}

/* Validate `s[0:n]`. `pattern` != 0 allows "*" and a final ">".
 * On success stores the number of tokens in *ntokens. */
static inline int rc_subject_check(const char *s, size_t n, int pattern, size_t *ntokens)
{
    size_t i, start = 0, tokens = 0;
    if (n == 0)
        return RC_SUBJECT_EMPTY;
    if (n > RC_SUBJECT_MAX_LEN)
        return RC_SUBJECT_TOO_LONG;
    for (i = 0; i <= n; i++) {
        unsigned char c = (i < n) ? (unsigned char)s[i] : (unsigned char)'.';
        if (c >= 0x80) {
            size_t len;
            if (rc_utf8_is_space((const unsigned char *)s + i, n - i, &len))
                return RC_SUBJECT_BAD_CHAR;
            i += len - 1;
            continue;
        }
        if (c == '.') {
            size_t len = i - start;
            if (len == 0)
                return RC_SUBJECT_EMPTY_TOKEN;
            if (len == 1 && (s[start] == '*' || s[start] == '>')) {
                if (!pattern)
                    return RC_SUBJECT_WILDCARD;
                if (s[start] == '>' && i != n)
                    return RC_SUBJECT_GT_NOT_LAST;
            }
            tokens++;
            start = i + 1;
        } else if (c <= 0x20 || c == 0x7f) {
            return RC_SUBJECT_BAD_CHAR;
        }
    }
    *ntokens = tokens;
    return RC_SUBJECT_OK;
}

#endif /* RC_SUBJECT_H */
