/* tools/pinsctl/pinsctl.h: what pinsctl's command files share (main is tools/pinsctl/pinsctl.c).
 *
 * Exit status of every command: 0 done, 1 the server (or the database) said no, 2 usage error,
 * 3 the server could not be reached or gave no usable answer.
 */
#ifndef PINSCTL_H
#define PINSCTL_H

#define PINSCTL_EXIT_OK          0
#define PINSCTL_EXIT_REFUSED     1
#define PINSCTL_EXIT_USAGE       2
#define PINSCTL_EXIT_UNREACHABLE 3

/* pinsctl [--database-url URL] migrate ...: argv as main's (tools/pinsctl/migrate.c). */
int pinsctl_migrate_main(int argc, char **argv);

#endif
