/* Subject and pattern validation over UTF-8 bytes.
 *
 * A subject is one or more dot-separated tokens. Tokens are non-empty and
 * contain no ASCII whitespace or control characters. In a pattern, a token
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
