package broker

import (
	"errors"
	"fmt"
	"os"

	"github.com/moat-mqtt/moat/internal/acl"
	"github.com/moat-mqtt/moat/internal/auth"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/passwd"
)

// ScopeSummary describes what one authentication scope loaded.
type ScopeSummary struct {
	Listeners      []string
	AllowAnonymous bool
	PasswordFile   string
	Users          int
	ACLFile        string
	ACL            acl.Stats
	// Warnings are non-fatal findings: ACL lines, file permissions.
	Warnings []string
}

// LoadPolicy reads every password and ACL file the configuration names
// and builds the policy the auth hook enforces. It either returns a whole
// new policy or an error naming file:line; it never returns a partial one,
// so a failed reload leaves the old policy in force.
func LoadPolicy(cfg *config.Config) (*auth.Policy, []ScopeSummary, error) {
	p := &auth.Policy{
		Scopes:                map[string]*auth.Scope{},
		StrictSubscribe:       cfg.StrictSubscribe,
		MaxKeepalive:          cfg.Limits.MaxKeepalive,
		MessageSizeLimit:      cfg.Limits.MessageSizeLimit,
		UseUsernameAsClientID: cfg.UseUsernameAsClientID,
	}
	loaded := map[*config.Security]int{}
	var sums []ScopeSummary
	var scopes []*auth.Scope
	var errs []error
	failed := map[*config.Security]bool{} // report a shared scope's errors once
	for _, l := range cfg.Listeners {
		if failed[l.Security] {
			continue
		}
		i, ok := loaded[l.Security]
		if !ok {
			sc, sum, err := loadScope(l.Security)
			if err != nil {
				errs = append(errs, err)
				failed[l.Security] = true
				continue
			}
			i = len(scopes)
			loaded[l.Security] = i
			scopes = append(scopes, sc)
			sums = append(sums, sum)
		}
		p.Scopes[l.ID] = scopes[i]
		sums[i].Listeners = append(sums[i].Listeners, l.ID)
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	// Sessions restored from a listener no longer configured belong to
	// the one scope of all listeners without per_listener_settings, and
	// to none (they are removed) with it.
	p.Default = &auth.Scope{}
	if !cfg.PerListenerSettings && len(scopes) == 1 {
		p.Default = scopes[0]
	}
	return p, sums, nil
}

func loadScope(s *config.Security) (*auth.Scope, ScopeSummary, error) {
	sc := &auth.Scope{AllowAnonymous: s.AllowAnonymous}
	sum := ScopeSummary{AllowAnonymous: s.AllowAnonymous, PasswordFile: s.PasswordFile, ACLFile: s.ACLFile}
	var errs []error
	for _, path := range []string{s.PasswordFile, s.ACLFile} {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o004 != 0 {
			sum.Warnings = append(sum.Warnings, config.PermissionAdvice(path, st))
		}
	}
	if s.PasswordFile != "" {
		f, err := passwd.Load(s.PasswordFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("password_file (%s): %w", s.PasswordFilePos, err))
		} else {
			sc.Passwd, sum.Users = f, f.Len()
			if f.Len() == 0 && !s.AllowAnonymous {
				sum.Warnings = append(sum.Warnings, fmt.Sprintf("password_file %s (%s) has no users: no client can connect until one is added (moat passwd)", s.PasswordFile, s.PasswordFilePos))
			}
		}
	}
	if s.ACLFile != "" {
		r, warns, err := acl.Load(s.ACLFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("acl_file (%s): %w", s.ACLFilePos, err))
		} else {
			sc.ACL, sum.ACL = r, r.Stats()
			sum.Warnings = append(sum.Warnings, warns...)
		}
	}
	return sc, sum, errors.Join(errs...)
}

// checkUsers refuses a listener nobody could ever connect to: no
// anonymous clients and no password_file to verify users.
func checkUsers(cfg *config.Config) error {
	var errs []error
	seen := map[*config.Security]bool{}
	for _, l := range cfg.Listeners {
		if s := l.Security; !seen[s] && !s.AllowAnonymous && s.PasswordFile == "" {
			seen[s] = true
			errs = append(errs, fmt.Errorf("listener %s (%s): allow_anonymous false and no password_file: no client could connect; add password_file FILE, or allow_anonymous true", l.ID, l.Pos))
		}
	}
	return errors.Join(errs...)
}

// PolicyWarnings are dangerous combinations check-config reports.
func PolicyWarnings(cfg *config.Config, sums []ScopeSummary) []string {
	var out []string
	for _, l := range cfg.Listeners {
		if l.IsLoopback() || !l.Security.AllowAnonymous {
			continue
		}
		for _, s := range sums {
			for _, id := range s.Listeners {
				if id == l.ID && (s.ACL.UsesUsername || s.ACL.UsesClientID) {
					out = append(out, fmt.Sprintf("%s: listener %s allows anonymous clients and the ACL uses %%u/%%c patterns: anonymous clients may use any client id pattern topics", l.Pos, l.ID))
				}
			}
		}
		if l.Security.ACLFile == "" {
			out = append(out, fmt.Sprintf("%s: listener %s allows anonymous clients with no acl_file: they may read and write every topic", l.Pos, l.ID))
		}
	}
	return out
}
